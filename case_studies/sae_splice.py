"""The DLM-Scope splice test on every shipped model: per-step SAE reconstruction and splice tables.

    from case_studies import sae_splice
    metrics = sae_splice.run(n=200, out_dir="out/sae_splice")          # every shipped diffusion model
    metrics = sae_splice.run(di.load_model("latin"), n=200)            # one model

For each model and each decoder layer a Top-K SAE (SAELens) is trained on ``hook_resid_post`` at
every step and position of training-split generations of the model's first task (its tasks mixed
would blur which task a number describes), then measured on ``n`` held-out prompts of that task:

* reconstruction per denoising step: MSE, explained variance, L0 (a description of the SAE, so no
  interval; the activations per step are in the table);
* the splice test, one step at a time (DLM-Scope, Wang et al. 2026: in a diffusion LM, splicing an
  SAE into an *early* layer can lower the loss): the SAE replaces the layer at step ``s`` only, the
  clean run's random draws are replayed, and the change in step ``s``'s cross-entropy against the
  reference canvas (mean of per-row differences, paired bootstrap 95% interval) and the final exact
  match spliced and clean (Wilson intervals) are reported over the rows still denoising at ``s``.

The finding the dynamics gate checks, per model, is the earliest layer's ΔCE at step 1, re-measured
under the alternative sampler setting: step 1 is the first step whose input the sampler shaped
(step 0 sees only mask tokens, so its ΔCE cannot move under a sampler change, a check that could
not fail).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from case_studies.sae_features import train_layer_sae
from diffinterp import studies
from diffinterp.figures import saes as sae_figures
from diffinterp.instruments.saes.splicing import reconstruction_by_step, splice_by_step
from diffinterp.organisms.batches import canvas_batch
from diffinterp.studies.gate import alternative_kwargs, measure_gate

QUICK_N = 24
HOOK = "decoder.blocks.{layer}.hook_resid_post"
GATE_STEP = 1  # the gate's finding: the earliest layer's ΔCE when spliced at this step


def _measure_model(hm, name: str, out, *, n, seed, layers, width, k, training_steps, quick, gen_kwargs) -> dict:
    task = (list(studies.model_tasks(hm)) or [studies.RANDOM_TASK])[0]
    prompts = studies.prompt_set(hm, task, n, seed=seed)
    if prompts.answers is None:
        raise ValueError(f"sae-splice needs reference answers; model {name} has none (an organism has them)")
    targets = canvas_batch(prompts.answers, hm.config.canvas_length)
    held_prompts = studies.prompt_set(hm, task, max(16, n // 4), seed=seed, offset=n)
    n_layers = hm.config.text_config.num_hidden_layers
    layers = sorted(set(layers)) if layers is not None else ([0] if quick else list(range(n_layers)))
    per_layer, saes = {}, {}
    for layer in layers:
        hook = HOOK.format(layer=layer)
        result = train_layer_sae(hm, layer, task=task, held_prompts=held_prompts,
                                 folder=out.path / "saes" / name / f"layer{layer}", width=width, k=k,
                                 training_steps=training_steps, seed=seed, model_name=name,
                                 gen_kwargs=gen_kwargs)  # fmt: skip
        saes[layer] = result.sae
        torch.manual_seed(seed)
        reconstruction = reconstruction_by_step(hm, result.sae, hook, prompts.input_ids, prompts.attention_mask,
                                                **gen_kwargs)  # fmt: skip
        torch.manual_seed(seed)
        splice = splice_by_step(hm, result.sae, hook, prompts.input_ids, prompts.attention_mask, targets,
                                seed=seed, **gen_kwargs)  # fmt: skip
        per_layer[layer] = {"held_out": result.held_out, "curve": result.curve, "folder": f"saes/{name}/layer{layer}",
                            "reconstruction_by_step": reconstruction, "splice": splice}  # fmt: skip
    first = layers[0]
    # None when the run made no step GATE_STEP (one-step runs): the gate then says the finding's stability is unknown
    finding = next((r["delta_ce"] for r in per_layer[first]["splice"]["steps"] if r["step"] == GATE_STEP), None)
    torch.manual_seed(seed)
    alternative = splice_by_step(hm, saes[first], HOOK.format(layer=first), prompts.input_ids, prompts.attention_mask,
                                 targets, steps=[GATE_STEP], seed=seed, **alternative_kwargs(gen_kwargs))  # fmt: skip
    alternative_finding = alternative["steps"][0]["delta_ce"] if alternative["steps"] else None
    runs = list(studies.run_prompt_set(hm, prompts, seed=seed, **gen_kwargs))
    gate = measure_gate(hm, runs, seed=seed, finding=finding, alternative_finding=alternative_finding,
                        finding_name=f"ΔCE of layer {first} spliced at step {GATE_STEP}", **gen_kwargs)  # fmt: skip
    steps = sorted({row["step"] for layer in layers for row in per_layer[layer]["splice"]["steps"]})
    delta = [[next((r["delta_ce"]["value"] for r in per_layer[layer]["splice"]["steps"] if r["step"] == s), None)
              for s in steps] for layer in layers]  # fmt: skip
    out.figure(sae_figures.splice_heatmap([[float("nan") if v is None else v for v in row] for row in delta], layers,
                                          steps, f"{name}: SAE spliced at one step, change in that step's CE"),
               f"splice_delta_ce_{name}")  # fmt: skip
    return {"task": task, "n": n, "layers": layers, "per_layer": per_layer, "gate": gate,
            "model": studies.model_info(hm)}  # fmt: skip


def tables_markdown(models: dict[str, dict]) -> str:
    """The docs' tables from the metrics: per model and layer, held-out EV, EV by step, ΔCE at step 0."""

    def ci(d: dict | None, fmt: str = "+.3f") -> str:
        if not d or d.get("value") is None:
            return "—"
        return f"{d['value']:{fmt}} [{d['ci_low']:{fmt}}, {d['ci_high']:{fmt}}]"

    max_steps = max(len(layer["reconstruction_by_step"]) for m in models.values() for layer in m["per_layer"].values())
    shown = min(max_steps, 8)
    lines = ["**Explained variance per denoising step** (all positions; description of the SAE, no interval)", "",
             "| model | layer | held-out EV | " + " | ".join(f"step {s}" for s in range(shown)) + " |",
             "|---|---|---|" + "---|" * shown]  # fmt: skip
    for name, m in models.items():
        for layer, d in m["per_layer"].items():
            by_step = {r["step"]: r["explained_variance"] for r in d["reconstruction_by_step"]}
            cells = [f"{by_step[s]:.3f}" if s in by_step else "—" for s in range(shown)]
            lines.append(
                f"| {name} | {layer} | {d['held_out']['explained_variance']:.3f} | " + " | ".join(cells) + " |"
            )
    lines += ["", "**Splice at step 0** (ΔCE: spliced − clean cross-entropy of step 0's logits, nats, mean of per-row "
              "differences, paired bootstrap 95% CI; final exact match with Wilson 95% CI)", "",
              "| model | layer | n | ΔCE step 0 | ΔCE, mean over steps | accuracy clean | accuracy spliced at step 0 |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, m in models.items():
        for layer, d in m["per_layer"].items():
            rows = d["splice"]["steps"]
            values = [r["delta_ce"]["value"] for r in rows if r["delta_ce"]["value"] is not None]
            mean_over = f"{sum(values) / len(values):+.3f}" if values else "—"
            first = rows[0]
            lines.append(f"| {name} | {layer} | {first['n']} | {ci(first['delta_ce'])} | {mean_over} | "
                         f"{ci(first['accuracy_clean'], '.3f')} | {ci(first['accuracy_spliced'], '.3f')} |")  # fmt: skip
    lines += ["", f"**Dynamics gate** (per model; finding: the earliest layer's ΔCE at step {GATE_STEP})", "",
              "| model | task | full accuracy | one pass | step-0 share | finding | finding, alternative sampler | gate |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, m in models.items():
        g = m["gate"]
        one = g["one_pass_accuracy"]
        lines.append(f"| {name} | {m['task']} | {ci(g['full_accuracy'], '.3f')} | "
                     f"{'—' if one is None else format(one['value'], '.3f')} | {g['final_equals_step0']['value']:.3f} | "
                     f"{ci(g['finding'])} | {ci(g['alternative']['finding'])} | {'held' if g['passed'] else 'failed'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run(model=None, *, n: int = 200, out_dir: str | Path = "out/sae_splice", seed: int = 0, quick: bool = False,
        models=None, layers=None, width: int = 256, k: int = 8, training_steps: int = 400,
        **gen_kwargs: Any) -> dict:  # fmt: skip
    """Train per-layer SAEs on each model (default: every shipped diffusion model) and measure them."""
    import diffinterp as di
    from diffinterp.core.loading import bundled_models

    n = min(n, QUICK_N) if quick else n
    training_steps = min(training_steps, 100) if quick else training_steps
    if model is not None:
        organism = (getattr(model, "metadata", None) or {}).get("organism")  # a bundled model's name
        targets = {organism or Path(studies.model_info(model)["name_or_path"]).name: lambda: model}
    else:
        names = list(models) if models is not None else (["carry"] if quick else list(bundled_models()))
        targets = {name: (lambda name=name: di.load_model(name)) for name in names}
    with studies.StudyOutput(out_dir) as out:
        measured = {}
        for name, load in targets.items():
            measured[name] = _measure_model(load(), name, out, n=n, seed=seed, layers=layers, width=width, k=k,
                                             training_steps=training_steps, quick=quick, gen_kwargs=gen_kwargs)  # fmt: skip
        tables = tables_markdown(measured)
        studies.write_text_atomic(out.path / "tables.md", tables)
        out.metrics.update(
            summary={name: {"gate": m["gate"]["verdict"],
                            "delta_ce_step0": {layer: d["splice"]["steps"][0]["delta_ce"]["value"]
                                               for layer, d in m["per_layer"].items()},
                            "held_out_explained_variance": {layer: d["held_out"]["explained_variance"]
                                                            for layer, d in m["per_layer"].items()}}
                     for name, m in measured.items()},
            models={name: {key: value for key, value in m.items()} for name, m in measured.items()},
            n=n,
            options={"seed": seed, "quick": quick, "layers": layers, "width": width, "k": k,
                     "training_steps": training_steps, **studies.generation_options(gen_kwargs)},
        )  # fmt: skip
    return out.metrics
