"""Non-chronological reasoning: does the canvas settle in the order of its dependencies, not left to right?

    from case_studies import non_chronological
    metrics = non_chronological.run(n=100, out_dir="out/non_chronological")   # carry and latin organisms

On the organisms built for it, the ground truth gives each answer position a **round**: the length
of the dependency chain it needs (``carry``: suffix sums, written left to right but computed right
to left; ``latin``: the naked-single propagation round of each blank cell).

1. **Prediction order** (primary): the step from which each position's argmax stays at its final
   token (:func:`~diffinterp.phenomena.settling.settle_steps` with acceptance ignored). Its
   **agreement** with the dependency order and with left-to-right order
   (:mod:`diffinterp.phenomena.order`: among position pairs whose rounds differ, the share that
   settle in round order), per row, with a bootstrap 95% CI, and the mean settle step per round.
2. **Commit order** (secondary, a property of the sampler): the same with acceptance required.
3. **Causal test** (``carry``): corrupt the canvas token of position j (and its self-conditioning
   input) from the step it settles, while its left neighbour i = j - 1 has not settled, replay with
   the same random draws, and see whether i ends at the value its local rule implies from the
   corrupted j (``follows``), stays (``unchanged``) or goes elsewhere (``other``).
4. **The autoregressive twin** on the same prompts (``carry``): written left to right, its first
   token needs the whole chain summed latently.
5. **The dynamics gate** (:mod:`diffinterp.phenomena.gate`) of the headline finding (prediction-order
   agreement with the dependency order), re-measured under the alternative sampler setting.

On a model without ground truth (any other checkpoint) the study measures left-to-right agreement
only and the gate says it could not be checked. Definitions: ``docs/case-studies/non-chronological.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffinterp import studies
from diffinterp.figures import settling as figures
from diffinterp.organisms.catalog import TASKS, organism_of
from diffinterp.organisms.families import carry
from diffinterp.organisms.task import Example
from diffinterp.phenomena import order as od
from diffinterp.phenomena import settling as st
from diffinterp.stats import mean_ci, proportion_of
from diffinterp.studies.gate import accuracy, alternative_kwargs, focus_positions, measure_gate

ORGANISMS = ("carry", "latin")
QUICK_N = 24


def ground_truth_order(batch, canvas_length: int) -> torch.Tensor | None:
    """``[B, P]`` ground-truth rounds of the focus positions (``-1`` elsewhere), or ``None`` when the
    batch's task has no rounds."""
    task = TASKS.get(batch.prompts.task)
    if task is None or task.truth is None or batch.prompts.texts is None or batch.prompts.answers is None:
        return None
    out = torch.full((len(batch.rows), canvas_length), -1, dtype=torch.long)
    for row, (text, answer) in enumerate(zip(batch.prompts.texts, batch.prompts.answers, strict=True)):
        truth = task.truth(Example(batch.prompts.task, text, answer))
        if "round" not in truth:
            return None
        for position in truth.get("focus", range(len(truth["round"]))):
            if position < canvas_length:
                out[row, position] = truth["round"][position]
    return out


def settle_orders(trajectory) -> dict[str, torch.Tensor]:
    """Prediction-order and commit-order settle steps ``[B, P]`` of block 0, and each row's last step."""
    argmax, accepted = trajectory.stack("argmax").cpu(), trajectory.stack("accepted").cpu()
    active = trajectory.stack("active").cpu()
    return {
        "prediction": st.settle_steps(argmax, torch.ones_like(accepted), active),
        "commit": st.settle_steps(argmax, accepted, active),
        "last": st.last_steps(active),
        "final": st.final_tokens(argmax, st.last_steps(active)),
    }


def order_agreement(hm, batches, canvas_length: int, *, seed: int = 0) -> dict[str, Any]:
    """Agreement of prediction and commit order with the dependency order and with left to right."""
    parts: dict[str, list] = {"prediction": [], "commit": [], "order": [], "correct": [], "steps": []}
    for batch in batches:
        orders = settle_orders(batch.trajectory)
        truth = ground_truth_order(batch, canvas_length)
        if truth is None:  # no ground truth: score the answer's (or the output's) positions left to right
            truth = torch.full_like(orders["final"], -1)
            eos, pad = studies.special_ids(hm)
            positions = focus_positions(batch) or [
                st.content_positions(row, eos, pad) for row in orders["final"].tolist()
            ]
            for row, cols in enumerate(positions):
                truth[row, [c for c in cols if c < canvas_length]] = 0
        parts["order"].append(truth)
        parts["prediction"].append(orders["prediction"])
        parts["commit"].append(orders["commit"])
        parts["steps"].append(orders["last"] + 1)
        correct = batch.correct if batch.correct is not None else torch.ones(len(batch.rows), dtype=torch.bool)
        parts["correct"].append(correct.bool())
    truth, correct = torch.cat(parts["order"]), torch.cat(parts["correct"])
    has_rounds = bool((truth > 0).any())
    out: dict[str, Any] = {"rows": len(truth), "mean_steps": mean_ci(torch.cat(parts["steps"]).tolist(), seed=seed)}
    for kind in ("prediction", "commit"):
        settle = torch.cat(parts[kind])
        entry = {"left_to_right": od.agreement_summary(od.pair_counts(settle, od.left_to_right(truth)), seed=seed)}
        if has_rounds:
            counts = od.pair_counts(settle, truth)
            entry["dependency"] = od.agreement_summary(counts, seed=seed)
            entry["dependency_correct_rows"] = od.agreement_summary(counts, correct, seed=seed)
            entry["settle_step_by_round"] = {
                str(r): mean_ci(settle[truth == r].float().tolist(), seed=seed)
                for r in sorted(set(truth[truth > 0].tolist()))
            }
        out[kind] = entry
    return out


def headline(agreement: dict) -> dict | None:
    """The finding the gate checks: prediction-order agreement with the dependency order."""
    entry = agreement["prediction"].get("dependency")
    return entry["mean_agreement"] if entry else None


# ------------------------------------------------------------------------------------- causal test
def causal_test(hm, batch, *, shift: int = 5) -> dict[str, Any] | None:
    """The carry causal test on one batch (module docstring, item 3); ``None`` for other tasks."""
    if batch.prompts.task != "carry" or batch.prompts.texts is None:
        return None
    orders = settle_orders(batch.trajectory)
    settle, final = orders["commit"], orders["final"]
    digits = [hm.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    j = carry.N_DIGITS // 2  # the corrupted position; its left neighbour i = j - 1 reads it
    i = j - 1
    rows = torch.arange(len(batch.rows))
    clean_j, clean_i = final[:, j], final[:, i]
    subject = (settle[:, j] < settle[:, i]) & torch.isin(clean_j, torch.tensor(digits))
    if batch.correct is not None:
        subject &= batch.correct.bool().cpu()
    corrupted = st.corrupt_tokens(clean_j, digits, shift)
    with torch.no_grad():
        replacement = hm.model.model.decoder.embed_tokens(corrupted.to(hm.model.device))
    when = torch.where(subject, settle[:, j], torch.full_like(settle[:, j], -1))
    position = torch.full_like(when, j)
    hooks = [
        ("decoder.hook_embed", st.replace_positions_hook(replacement, position, when, persist=True)),
        (
            "decoder.sc.hook_soft_embed",
            st.replace_positions_hook(replacement, position, when, persist=True, skip_zero=True),
        ),
    ]
    replayed = hm.run_with_hooks(batch.prompts.input_ids, fwd_hooks=hooks, **studies.rerun_kwargs(batch))
    new = replayed.block(0).final_canvas.cpu()
    outcomes = []
    for r in rows[subject].tolist():
        x = carry.parse_prompt(batch.prompts.texts[r])
        implied = digits[(x[i] + digits.index(int(corrupted[r]))) % 10]
        outcomes.append(st.outcome([int(new[r, i])], [int(clean_i[r])], [implied]))
    untouched = [new[r].tolist() == final[r].tolist() for r in rows[~subject].tolist()]
    return {
        "corrupted_position": j,
        "reader_position": i,
        "shift": shift,
        "n_subjects": len(outcomes),
        **{kind: proportion_of([o == kind for o in outcomes]) for kind in ("follows", "unchanged", "other")},
        "replay_exact_untouched_rows": proportion_of(untouched),
    }


def twin_accuracy(name: str, prompts, seed: int) -> dict[str, Any] | None:
    """The AR twin of organism ``name`` on the same prompts: exact match and per-position accuracy."""
    from diffinterp.organisms.evaluate import predict_batch
    from diffinterp.organisms.twin import load_ar_baseline

    try:
        twin = load_ar_baseline(name)
    except (FileNotFoundError, ValueError):
        return None
    predicted = predict_batch(twin, prompts.texts, model_kind="ar", seed=seed).texts
    task = TASKS[prompts.task]
    examples = [Example(prompts.task, t, a) for t, a in zip(prompts.texts, prompts.answers, strict=True)]
    per_position: dict[int, list[bool]] = {}
    for text, example in zip(predicted, examples, strict=True):
        got, want = text.split(), example.answer.split()
        for p, token in enumerate(want):
            per_position.setdefault(p, []).append(p < len(got) and got[p] == token)
    return {
        "accuracy": proportion_of([task.accepts(t, e) for t, e in zip(predicted, examples, strict=True)]),
        "accuracy_by_position": {str(p): proportion_of(v) for p, v in sorted(per_position.items())},
    }


# ------------------------------------------------------------------------------------- run
def _study_task(hm, task: str, n: int, seed: int, gen_kwargs: dict) -> tuple[dict, list]:
    prompts = studies.prompt_set(hm, task, n, seed=seed)
    batches = list(studies.run_prompt_set(hm, prompts, seed=seed, **gen_kwargs))
    canvas = hm.config.canvas_length
    agreement = order_agreement(hm, batches, canvas, seed=seed)
    alternative = list(studies.run_prompt_set(hm, prompts, seed=seed, **alternative_kwargs(gen_kwargs)))
    alt_agreement = order_agreement(hm, alternative, canvas, seed=seed)
    gate = measure_gate(
        hm,
        batches,
        seed=seed,
        finding=headline(agreement),
        alternative_finding=headline(alt_agreement),
        finding_name="prediction-order agreement with the dependency order",
        **gen_kwargs,
    )
    result = {
        "task": prompts.task,
        "n": len(prompts),
        "accuracy": accuracy(batches),
        "order": agreement,
        "order_alternative_sampler": alt_agreement,
        "causal_test": causal_test(hm, batches[0]),
        "gate": gate,
    }
    return result, batches


def run(model=None, *, n: int = 100, out_dir: str | Path = "out/non_chronological", seed: int = 0,
        quick: bool = False, tasks=None, **gen_kwargs) -> dict:  # fmt: skip
    """Run the study on its organisms (``carry``, ``latin``) or on ``model``; write metrics.json and
    figures; the metrics."""
    import diffinterp as di

    n = min(n, QUICK_N) if quick else n
    models = [(name, di.load_model(name)) for name in ORGANISMS] if model is None else [(None, model)]
    results, examples = {}, []
    with studies.StudyOutput(out_dir) as out:
        for name, hm in models:
            own = studies.model_tasks(hm)
            for task in tasks or own or (studies.RANDOM_TASK,):
                key = task if name is None else f"{name}/{task}"
                result, batches = _study_task(hm, task, n, seed, gen_kwargs)
                spec = organism_of(hm)  # a given model that is an organism still gets its twin (None: not shipped)
                if spec is not None and task == "carry":
                    result["twin"] = twin_accuracy(spec.name, batches[0].prompts, seed)
                results[key] = result
                examples.append((key, batches[0], hm))
        out.figure(figures.settle_by_round({k: r["order"] for k, r in results.items()}), "settle_step_by_round")
        out.figure(figures.agreement_bars({k: r["order"] for k, r in results.items()}), "order_agreement")
        for key, batch, hm in examples[:2]:
            orders = settle_orders(batch.trajectory)
            truth = ground_truth_order(batch, hm.config.canvas_length)
            fig = figures.round_heatmap(orders["prediction"], orders["final"], truth, range(min(6, len(batch.rows))),
                                        hm.tokenizer, title=f"Prediction settle step, {key}")  # fmt: skip
            out.figure(fig, f"settle_heatmap_{key.replace('/', '_')}")
        summary = {}
        for key, result in results.items():
            dependency = result["order"]["prediction"].get("dependency")
            summary[f"{key}_accuracy"] = (result["accuracy"] or {}).get("value")
            summary[f"{key}_prediction_vs_dependency"] = dependency["mean_agreement"]["value"] if dependency else None
            summary[f"{key}_prediction_left_to_right"] = result["order"]["prediction"]["left_to_right"][
                "mean_agreement"
            ]["value"]
            summary[f"{key}_gate"] = result["gate"]["verdict"]
            if result.get("causal_test"):
                summary[f"{key}_causal_follows"] = result["causal_test"]["follows"]["value"]
        out.metrics.update(
            summary=summary,
            n=n,
            per_task=results,
            gate={key: result["gate"] for key, result in results.items()},
            models={key: studies.model_info(hm) for key, _, hm in examples},
            options={
                "seed": seed,
                "quick": quick,
                "tasks": list(tasks or []),
                **studies.generation_options(gen_kwargs),
            },
        )
    return out.metrics
