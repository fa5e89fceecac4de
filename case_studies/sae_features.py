"""SAE features over denoising time on the carry organism: reconstruction, splicing, commit, steering.

    from case_studies import sae_features
    metrics = sae_features.run(n=200, out_dir="out/sae_features")   # the carry organism

For every decoder layer a Top-K SAE (SAELens) is trained on ``hook_resid_post`` at every step and
position of training-split generations; on held-out prompts the study then measures

* reconstruction per denoising step (MSE, explained variance, L0) and the DLM-Scope splice test:
  the change in cross-entropy of the spliced step's logits and in final accuracy when the SAE
  replaces the layer at one step (the clean run's draws replayed);
* feature dynamics on the middle layer: for each answer digit value ``v``, the feature that best
  detects "the output digit here is ``v``" at the last step (chosen on one half of the prompts,
  its AUROC measured on the other half, beside the best AUROC under shuffled labels: the
  selection-aware control), and the step that feature commits at each position beside the step
  the position's argmax token settles. Ground truth: each answer digit is a suffix sum, so the
  carry chain decides digits right to left; a feature carrying the answer should commit right to
  left too, and it may commit before the token does;
* steering: the chosen feature's decoder direction added at one position of prompts whose digit
  there is another value, on every step (uniform) or only while the feature forms in clean runs
  (adaptive; Zhou et al. 2026), effect (the digit becomes ``v``) and damage (another position
  changes) side by side.

The dynamics gate is the carry organism's (one pass vs full run, step-0 share), with the finding
"features commit before their tokens settle" re-measured under the alternative sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffinterp import studies
from diffinterp.figures import saes as sae_figures
from diffinterp.instruments.lens import settle_steps
from diffinterp.instruments.saes.activations import ActivationSpec, activation_stream, step_activations
from diffinterp.instruments.saes.features import best_features, commit_steps, feature_trace, forming_steps
from diffinterp.instruments.saes.splicing import reconstruction_by_step, splice_by_step
from diffinterp.instruments.saes.training import SAETrainingConfig, train_sae
from diffinterp.instruments.steering import steered
from diffinterp.organisms.batches import canvas_batch
from diffinterp.stats import auroc, auroc_ci, mean_ci, proportion_of
from diffinterp.studies.gate import alternative_kwargs, measure_gate

ORGANISM = "carry"
QUICK_N = 32
DIGITS = 10  # the carry answer's digits fill canvas positions 0..9
STRENGTHS = (1.0, 2.0, 4.0, 8.0)  # multiples of the feature's mean activation when it is on


def train_layer_sae(hm, layer: int, *, task: str, held_prompts, folder: Path, width: int, k: int,
                    training_steps: int, seed: int, model_name: str, gen_kwargs: dict):  # fmt: skip
    """A Top-K SAE on ``decoder.blocks.{layer}.hook_resid_post`` (every step and position) from
    fresh training-split generations of ``task``, saved to ``folder``; its held-out metrics on the
    activations of ``held_prompts``. Shared by the SAE case studies. Returns SAELens's training result."""
    spec = ActivationSpec(f"decoder.blocks.{layer}.hook_resid_post")
    torch.manual_seed(seed)
    held, _ = step_activations(hm, held_prompts.input_ids, held_prompts.attention_mask, spec, **gen_kwargs)
    config = SAETrainingConfig(spec, width=width, k=k, training_samples=256 * training_steps, lr=1e-3, seed=seed,
                               log_every=25)  # fmt: skip
    batches = studies.training_prompt_batches(hm, 64, seed=seed + layer, tasks=[task])
    stream = activation_stream(hm, batches, spec, batch_size=256, buffer_size=8192, seed=seed, **gen_kwargs)
    return train_sae(hm, stream, config, out=folder, held_out=held, model_name=model_name, progress=False)


def _feature_dynamics(hm, sae, hook, prompts, targets, digit_ids, *, seed, gen_kwargs) -> dict:
    torch.manual_seed(seed)
    trajectory, cache = hm.run_with_cache(prompts.input_ids, names_filter=[hook], blocks=[0],
                                          attention_mask=prompts.attention_mask, **gen_kwargs)  # fmt: skip
    trace = feature_trace(sae, cache, hook)[..., :DIGITS, :]  # [S, B, DIGITS, d_sae]
    final, out = trace[-1], trajectory.block(0).final_canvas[:, :DIGITS].cpu()
    half = len(targets) // 2
    chosen = {}
    for value, token in enumerate(digit_ids):
        labels = out == token  # the model's own output digit (what its features must carry)
        if labels[:half].all() or not labels[:half].any() or labels[half:].all() or not labels[half:].any():
            continue
        pick = best_features(final[:half].flatten(0, 1), labels[:half].flatten(), top=1)[0]
        f = pick["feature"]
        test_scores, test_labels = final[half:, :, f].flatten(), labels[half:].flatten()
        shuffled = labels[half:].flatten()[
            torch.randperm(test_labels.numel(), generator=torch.Generator().manual_seed(seed))
        ]
        null = max(
            auroc(final[half:].flatten(0, 1)[:, g].numpy(), shuffled.int().numpy()) for g in range(final.shape[-1])
        )
        chosen[value] = {
            "feature": f,
            "auroc_selection_half": pick["auroc"],
            "auroc_held_out_half": auroc_ci(test_scores.numpy(), test_labels.int().numpy(), seed=seed),
            "best_auroc_shuffled_labels": null,
        }
    settle = settle_steps(trajectory)[:, :DIGITS]  # [B, DIGITS]: the argmax equals its final token from then on
    feature_commit = torch.full_like(settle, -1)
    for value, info in chosen.items():
        on = out == digit_ids[value]
        commit = commit_steps(trace[..., info["feature"]])  # [B, DIGITS]
        feature_commit[on] = commit[on]
    have = feature_commit >= 0
    by_position_feature = [mean_ci(feature_commit[have[:, p], p].float().tolist(), seed=seed) if have[:, p].any()
                           else {"value": None} for p in range(DIGITS)]  # fmt: skip
    by_position_token = [mean_ci(settle[have[:, p], p].float().tolist(), seed=seed) if have[:, p].any()
                         else {"value": None} for p in range(DIGITS)]  # fmt: skip
    ahead = proportion_of((feature_commit[have] < settle[have]).tolist())
    # the carry chain decides digits right to left: does position p commit no earlier than p + 1?
    pairs = have[:, :-1] & have[:, 1:]
    right_to_left = proportion_of((feature_commit[:, :-1] >= feature_commit[:, 1:])[pairs].tolist())
    token_right_to_left = proportion_of((settle[:, :-1] >= settle[:, 1:])[pairs].tolist())
    return {
        "trajectory": trajectory,
        "trace": trace,
        "chosen": chosen,
        "commit_by_position": by_position_feature,
        "settle_by_position": by_position_token,
        "feature_commits_before_token": ahead,
        "feature_commits_right_to_left": right_to_left,
        "token_settles_right_to_left": token_right_to_left,
        "n_steps": trace.shape[0],
    }


def _steer(hm, sae, hook, prompts, dynamics, digit_ids, *, position, seed, gen_kwargs) -> dict:
    """The best-detected digit's feature, steered at ``position`` on rows whose digit there differs."""
    chosen = dynamics["chosen"]
    value = max(chosen, key=lambda v: chosen[v]["auroc_held_out_half"]["value"])
    f = chosen[value]["feature"]
    trace, out = dynamics["trace"], dynamics["trajectory"].block(0).final_canvas[:, :DIGITS].cpu()
    on = out[:, position] == digit_ids[value]
    if on.sum() < 2 or (~on).sum() < 2:
        return {"skipped": f"too few rows with and without digit {value} at position {position}"}
    mean_on = trace[:, on, position, f].mean(1)  # [S]: the feature in clean runs that end on it
    typical = float(trace[-1, on, position, f].mean())
    adaptive = forming_steps(mean_on)
    rows = (~on).nonzero().flatten().tolist()
    sub = prompts.subset(rows)
    torch.manual_seed(seed)
    clean = hm.generate(sub.input_ids, attention_mask=sub.attention_mask, **gen_kwargs)
    clean_out = clean.block(0).final_canvas[:, :DIGITS].cpu()
    direction = sae.W_dec[f].detach()
    results = []
    for schedule, steps in (("uniform", None), ("adaptive", adaptive)):
        for strength in STRENGTHS:
            torch.manual_seed(seed)
            with steered(hm, hook, direction, strength * typical, steps=steps, positions=[position]):
                run = hm.generate(sub.input_ids, attention_mask=sub.attention_mask, replay=clean, **gen_kwargs)
            new = run.block(0).final_canvas[:, :DIGITS].cpu()
            # ground truth: digits left of the position are suffix sums through it (they may follow
            # the steered digit); digits right of it do not depend on it (a change there is damage)
            left, right = list(range(position)), list(range(position + 1, DIGITS))
            results.append({
                "schedule": schedule,
                "strength": strength,
                "steps": "all" if steps is None else list(steps),
                "effect": proportion_of((new[:, position] == digit_ids[value]).tolist()),
                "damage": proportion_of((new[:, right] != clean_out[:, right]).any(1).tolist()),
                "downstream_changed": proportion_of((new[:, left] != clean_out[:, left]).any(1).tolist()),
            })  # fmt: skip
    return {"digit": value, "feature": f, "position": position, "typical_activation": typical,
            "adaptive_steps": list(adaptive), "n_rows": len(rows), "runs": results}  # fmt: skip


def run(model=None, *, n: int = 200, out_dir: str | Path = "out/sae_features", seed: int = 0, quick: bool = False,
        tasks=None, layers=None, layer: int | None = None, width: int = 256, k: int = 8,
        training_steps: int = 600, position: int = 5, **gen_kwargs: Any) -> dict:  # fmt: skip
    """Train per-layer SAEs on ``model`` (default: the carry organism) and measure them (see above)."""
    import diffinterp as di

    hm = model if model is not None else di.load_model(ORGANISM)
    n = min(n, QUICK_N) if quick else n
    n_layers = hm.config.text_config.num_hidden_layers
    layers = list(layers) if layers is not None else ([n_layers // 2] if quick else list(range(n_layers)))
    layer = layer if layer is not None else layers[len(layers) // 2]
    if layer not in layers:
        raise ValueError(f"layer {layer} is not among the layers trained ({layers})")
    training_steps = min(training_steps, 150) if quick else training_steps
    task = (list(tasks) if tasks else list(studies.model_tasks(hm)) or [studies.RANDOM_TASK])[0]
    prompts = studies.prompt_set(hm, task, n, seed=seed)
    if prompts.answers is None:
        raise ValueError("sae-features needs a model whose task has reference answers (an organism, e.g. carry)")
    targets = canvas_batch(prompts.answers, hm.config.canvas_length)
    digit_ids = [hm.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    held_prompts = studies.prompt_set(hm, task, max(16, n // 4), seed=seed, offset=n)

    with studies.StudyOutput(out_dir) as out:
        saes, per_layer = {}, {}
        for lay in layers:
            result = train_layer_sae(hm, lay, task=task, held_prompts=held_prompts,
                                     folder=out.path / "saes" / f"layer{lay}", width=width, k=k,
                                     training_steps=training_steps, seed=seed,
                                     model_name=studies.model_info(hm)["name_or_path"], gen_kwargs=gen_kwargs)  # fmt: skip
            saes[lay] = result.sae
            per_layer[lay] = {"curve": result.curve, "held_out": result.held_out, "folder": f"saes/layer{lay}"}
            hook = f"decoder.blocks.{lay}.hook_resid_post"
            torch.manual_seed(seed)
            per_layer[lay]["reconstruction_by_step"] = reconstruction_by_step(
                hm, saes[lay], hook, prompts.input_ids, prompts.attention_mask, **gen_kwargs)  # fmt: skip
            torch.manual_seed(seed)
            per_layer[lay]["splice"] = splice_by_step(hm, saes[lay], hook, prompts.input_ids, prompts.attention_mask,
                                                      targets, **gen_kwargs)  # fmt: skip
        hook = f"decoder.blocks.{layer}.hook_resid_post"
        dynamics = _feature_dynamics(
            hm, saes[layer], hook, prompts, targets, digit_ids, seed=seed, gen_kwargs=gen_kwargs
        )
        alternative = _feature_dynamics(hm, saes[layer], hook, prompts, targets, digit_ids, seed=seed,
                                        gen_kwargs=alternative_kwargs(gen_kwargs))  # fmt: skip
        steering = _steer(hm, saes[layer], hook, prompts, dynamics, digit_ids, position=position, seed=seed,
                          gen_kwargs=gen_kwargs)  # fmt: skip
        batches = list(studies.run_prompt_set(hm, prompts, seed=seed, **gen_kwargs))
        gate = measure_gate(hm, batches, seed=seed, finding=dynamics["feature_commits_before_token"],
                            alternative_finding=alternative["feature_commits_before_token"],
                            finding_name="share of (row, digit) whose SAE feature commits before its token settles",
                            **gen_kwargs)  # fmt: skip

        steps = sorted({row["step"] for lay in layers for row in per_layer[lay]["splice"]["steps"]})
        delta = [[next((r["ce_spliced"] - r["ce_clean"] for r in per_layer[lay]["splice"]["steps"] if r["step"] == s),
                       float("nan")) for s in steps] for lay in layers]  # fmt: skip
        out.figure(
            sae_figures.training_curves({f"layer {lay}": per_layer[lay]["curve"] for lay in layers}), "training_curves"
        )
        out.figure(sae_figures.splice_heatmap(delta, layers, steps, "SAE spliced at one step: change in that step's CE"),
                   "splice_delta_ce")  # fmt: skip
        out.figure(sae_figures.commit_by_position(list(range(DIGITS)), dynamics["commit_by_position"],
                                                  dynamics["settle_by_position"],
                                                  f"Carry digits, layer {layer}: feature commit vs token settle"),
                   "commit_by_position")  # fmt: skip
        if "runs" in steering:
            out.figure(sae_figures.steering_comparison(steering["runs"], f"Steering digit {steering['digit']} at "
                                                       f"position {position} (feature {steering['feature']})"),
                       "steering")  # fmt: skip
        chosen = dynamics["chosen"]
        out.metrics.update(
            summary={
                "held_out_explained_variance": {lay: per_layer[lay]["held_out"]["explained_variance"] for lay in layers},
                "feature_commits_before_token": dynamics["feature_commits_before_token"]["value"],
                "feature_commits_right_to_left": dynamics["feature_commits_right_to_left"]["value"],
                "digit_features_held_out_auroc": {v: c["auroc_held_out_half"]["value"] for v, c in chosen.items()},
                "gate": gate["verdict"],
            },
            per_layer=per_layer,
            features={"layer": layer, "chosen": chosen,
                      "commit_by_position": dynamics["commit_by_position"],
                      "settle_by_position": dynamics["settle_by_position"],
                      "feature_commits_before_token": dynamics["feature_commits_before_token"],
                      "feature_commits_right_to_left": dynamics["feature_commits_right_to_left"],
                      "token_settles_right_to_left": dynamics["token_settles_right_to_left"],
                      "alternative_feature_commits_before_token": alternative["feature_commits_before_token"]},
            steering=steering,
            gate=gate,
            n=n,
            model=studies.model_info(hm),
            options={"seed": seed, "quick": quick, "layers": layers, "layer": layer, "width": width, "k": k,
                     "training_steps": training_steps, "position": position, **studies.generation_options(gen_kwargs)},
        )  # fmt: skip
    return out.metrics
