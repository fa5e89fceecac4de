"""Intermediate-context reasoning: do later denoising steps read tokens that are later overwritten?

    from case_studies import intermediate_context
    metrics = intermediate_context.run(n=100, out_dir="out/intermediate_context")

1. Find the transient tokens of every run (``diffinterp.phenomena.transient``): content tokens that sit in an
   intermediate canvas (accepted, or only in the argmax) and differ from the position's final token.
2. Causal test, in a replay with the clean run's random draws: hide the tokens from the steps that
   read them (canvas embedding -> a renoising draw, self-conditioning -> the token's probability
   removed). Jointly (all of a row's transient tokens in one run) and one token at a time.
3. Control: the same ablation on a matched non-transient content position at the same step.
4. Report: the fraction of correct answers that break (Wilson 95% CI), per task, per kind and role
   of token, beside the control; figures of transient tokens per step, an example canvas and the bars.
5. **Against the ground truth** (the ``gold`` organism: a carry chain whose values 3 and 8 are
   written ``Gold``, so the canvas loses a value its left neighbour is computed from; ``plain`` is
   the control with nothing hidden): per hidden term, whether its value is written at its position
   at some intermediate step and then overwritten (the paper's case) and whether that happens by the
   time the position that needs it settles, the probability the model puts on the hidden digit there
   at every step, and exact match under each self-conditioning bottleneck (continuous, none, argmax, top-k)
   for ``gold`` beside ``plain``: where the hidden value is carried. The dynamics gate
   (:mod:`diffinterp.phenomena.gate`) checks the written-then-overwritten share under an
   alternative sampler setting.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from diffinterp import stats, studies
from diffinterp.figures import transient as trf
from diffinterp.organisms.catalog import TASKS
from diffinterp.organisms.task import Example
from diffinterp.phenomena import transient as tr
from diffinterp.phenomena.settling import last_steps, settle_steps
from diffinterp.studies.gate import accuracy, alternative_kwargs, measure_gate

ORGANISM = "gold"
BOTTLENECKS = ("continuous", "none", "argmax", "topk:8")

QUICK_N = 24
MIN_ROWS = 3  # steps with fewer active rows are left out of the per-step rates (too noisy)


def _outputs(hm, trajectory) -> list[list[int]]:
    eos, pad = studies.special_ids(hm)
    return [studies.output_tokens(row, eos, pad) for row in trajectory.new_tokens()]


def _outcome(hm, batch, clean, ablations) -> dict[str, list]:
    """Per row of ``batch``: did a replay with ``ablations`` change the output / break a correct answer."""
    if not ablations:
        return tr.outcome_flags(clean, clean, batch.correct, batch.correct)
    hooks = tr.ablation_hooks(hm, batch.trajectory, ablations)
    run = hm.run_with_hooks(batch.trajectory.prompt_ids, fwd_hooks=hooks, **studies.rerun_kwargs(batch))
    predictions = [studies.decode_output(hm, row) for row in run.new_tokens()]
    correct = studies.score_predictions(hm, predictions, batch.prompts.answers, batch.prompts.task, batch.prompts.texts)
    return tr.outcome_flags(clean, _outputs(hm, run), batch.correct, correct)


def _annotated(hm, batch, special) -> list[tr.TransientToken]:
    prompts = batch.prompts
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompts.input_ids, prompts.attention_mask, strict=True)]
    answers = None
    if prompts.answers is not None and hm.tokenizer is not None:
        answers = [hm.tokenizer(a, add_special_tokens=False)["input_ids"] for a in prompts.answers]
    found = tr.trajectory_transient(batch.trajectory, special)
    return tr.annotate(found, rows, _outputs(hm, batch.trajectory), answers, hm.tokenizer)


def _ablations(hm, batch, tokens, special, rng, control: bool, replacement: str) -> list[tr.Ablation]:
    """One ablation per token, or per matched control position (skipped where none exists).

    ``replacement``: ``"noise"`` (a uniform draw, as renoising would give) or ``"final"`` (the
    position's final token; noise for controls, whose final token is the token itself).
    """
    trajectory, vocab, out = batch.trajectory, hm.config.text_config.vocab_size, []
    for t in tokens:
        active = trajectory.stack("active", t.block).cpu()
        if control:
            fields = [trajectory.stack(f, t.block).cpu() for f in ("argmax", "canvas_out", "accepted")]
            canvas, argmax = tr.transient_masks(*fields, active, _final(trajectory, t.block), special)
            t = tr.control_for(t, *fields, canvas | argmax, special, rng, fallback=special[:1])
            if t is None:
                continue
        if replacement == "final" and t.final not in (t.token, -1):
            new = t.final
        else:
            new = tr.noise_replacement(t.token, vocab, rng, special)
        out.append(tr.ablation_for(t, int(active[:, t.row].sum()), new))
    return out


def _final(trajectory, block):
    return trajectory.block(block).final_canvas.cpu()


@dataclass(frozen=True)
class HiddenTerm:
    """A hidden value: ``digits`` its ``(canvas position, digit)`` pairs, ``needed_by`` the canvas
    positions computed directly from it."""

    digits: tuple[tuple[int, int], ...]
    needed_by: tuple[int, ...]


def hidden_terms(batch) -> list[list[HiddenTerm]] | None:
    """Per row, every term the task hides (``gold``) or would hide (``plain``); ``None`` for tasks
    without hidden values (their ground truth has no ``hidden_digits``)."""
    task = TASKS.get(batch.prompts.task)
    if task is None or task.truth is None or batch.prompts.texts is None:
        return None
    out = []
    for text, answer in zip(batch.prompts.texts, batch.prompts.answers, strict=True):
        truth = task.truth(Example(batch.prompts.task, text, answer))
        if "hidden_digits" not in truth:
            return None
        out.append(
            [
                HiddenTerm(tuple(digits), tuple(truth["needed_by"][term]))
                for term, digits in zip(truth["hidden_terms"], truth["hidden_digits"], strict=True)
            ]
        )
    return out


def hidden_value_trace(hm, batches) -> dict[str, Any] | None:
    """Where the hidden values show. Per hidden term: was its value (every digit) the argmax at its
    positions at some step before the row's last (``written_before_last_step``), and was it written
    no later than the step at which the positions that need it settle (``written_by_needed_settle``,
    terms with such positions; ``needed_settle_step``: the mean of that step). Per step: the mean probability of the hidden digit and of ``Gold``
    at the term's first position (rows still active; recorded logits, softmax of the raw logits)."""
    digit = {d: hm.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    gold = hm.tokenizer.convert_tokens_to_ids("Gold")
    written, first_written, before_need, need_settle, mass_value, mass_gold = [], [], [], [], {}, {}
    for batch in batches:
        terms = hidden_terms(batch)
        if terms is None:
            return None
        traj = batch.trajectory
        argmax, active = traj.stack("argmax").cpu(), traj.stack("active").cpu()
        settle = settle_steps(argmax, traj.stack("accepted").cpu(), active)
        probs = torch.softmax(traj.stack("logits").float(), -1).cpu()  # [S, B, P, V]
        last = last_steps(active)
        for row, row_terms in enumerate(terms):
            for term in row_terms:
                shown = torch.stack([argmax[:, row, p] == digit[d] for p, d in term.digits]).all(0)
                steps = [s for s in range(int(last[row])) if bool(shown[s]) and bool(active[s, row])]
                written.append(bool(steps))
                if steps:
                    first_written.append(steps[0])
                if term.needed_by:
                    needed_settle = max(int(settle[row, p]) for p in term.needed_by)
                    before_need.append(bool(steps) and steps[0] <= needed_settle)
                    need_settle.append(needed_settle)
                position, value = term.digits[0]
                for s in range(int(last[row]) + 1):
                    mass_value.setdefault(s, []).append(float(probs[s, row, position, digit[value]]))
                    mass_gold.setdefault(s, []).append(float(probs[s, row, position, gold]))
    return {
        "hidden_terms": len(written),
        "written_before_last_step": stats.proportion_of(written),
        "written_by_needed_settle": stats.proportion_of(before_need),
        "first_written_step": stats.mean_ci(first_written),
        "needed_settle_step": stats.mean_ci(need_settle),
        "value_digit_probability_by_step": {str(s): stats.mean_ci(v) for s, v in sorted(mass_value.items())},
        "gold_probability_by_step": {str(s): stats.mean_ci(v) for s, v in sorted(mass_gold.items())},
    }


def bottleneck_accuracy(hm, prompts, *, seed, batch_size, gen_kwargs) -> dict[str, Any]:
    """Exact match of the same prompts (same seeds) under each self-conditioning bottleneck."""
    gen = {k: v for k, v in gen_kwargs.items() if k != "bottleneck"}
    return {
        mode: accuracy(
            list(studies.run_prompt_set(hm, prompts, batch_size=batch_size, seed=seed, bottleneck=mode, **gen))
        )
        for mode in BOTTLENECKS
    }


def ground_truth_section(hm, prompts, batches, *, seed, batch_size, gen_kwargs) -> dict[str, Any] | None:
    """The hidden-value analysis, the bottleneck costs and the gate, for tasks that hide values."""
    if hidden_terms(batches[0]) is None:
        return None
    trace = hidden_value_trace(hm, batches)
    alternative = list(
        studies.run_prompt_set(
            hm, prompts, batch_size=batch_size, seed=seed, record_logits=True, **alternative_kwargs(gen_kwargs)
        )
    )
    alt_trace = hidden_value_trace(hm, alternative)
    gate = measure_gate(
        hm,
        batches,
        seed=seed,
        finding=trace["written_before_last_step"],
        alternative_finding=alt_trace["written_before_last_step"],
        finding_name="share of hidden values written before the last step",
        **gen_kwargs,
    )
    costs = bottleneck_accuracy(hm, prompts, seed=seed, batch_size=batch_size, gen_kwargs=gen_kwargs)
    return {"hidden_values": trace, "hidden_values_alternative_sampler": alt_trace, "bottlenecks": costs, "gate": gate}


def study_task(hm, task, n, *, seed, replacement, max_rounds, batch_size, gen_kwargs) -> dict[str, Any]:
    """Transient tokens and their causal test on one task: per-task results, step rates and an example."""
    special = studies.special_ids(hm)
    ps = studies.prompt_set(hm, task, n, seed=seed)
    rng = random.Random(f"intermediate-context-{seed}-{task}")
    rows: dict[str, list] = defaultdict(list)  # one entry per prompt row
    single: list[dict] = []
    step_rates, example, found, untested, covered = tr.StepRates(), None, [], 0, 0
    hides = task in TASKS and "hidden_digits" in (
        TASKS[task].truth(TASKS[task].test_set(1)[0]) if TASKS[task].truth else {}
    )
    batches = list(studies.run_prompt_set(hm, ps, batch_size=batch_size, seed=seed, record_logits=hides, **gen_kwargs))
    for batch in batches:
        trajectory = batch.trajectory
        tokens = _annotated(hm, batch, special)
        found += tokens
        for block in range(len(trajectory.blocks)):
            fields = [trajectory.stack(f, block).cpu() for f in ("argmax", "canvas_out", "accepted", "active")]
            step_rates.add(tr.transient_masks(*fields, _final(trajectory, block), special), fields[3])
            if block == 0:
                step0 = tr.content_at_step(*fields, 0, special)  # the whole-canvas reference ablation
        clean = _outputs(hm, trajectory)
        correct = batch.correct.tolist() if batch.correct is not None else [None] * len(clean)
        ablate = partial(_ablations, hm, batch, special=special, rng=rng, replacement=replacement)
        joint = _outcome(hm, batch, clean, ablate(tokens, control=False))
        everything = _outcome(hm, batch, clean, ablate(step0, control=False))
        controls = ablate(tokens, control=True)
        covered += len(controls)
        ctl = _outcome(hm, batch, clean, controls)
        has = [any(t.row == r for t in tokens) for r in range(len(clean))]
        answer_seen = [any(t.row == r and t.role.startswith("answer") for t in tokens) for r in range(len(clean))]
        flags = {"correct": correct, "has": has, "answer_seen": answer_seen}
        for prefix, outcome in (("", joint), ("ctl_", ctl), ("all_", everything)):
            flags.update({prefix + key: values for key, values in outcome.items()})
        for key, values in flags.items():
            rows[key] += values
        per_row = [[t for t in tokens if t.row == r] for r in range(len(clean))]
        rounds = min(max_rounds, max(map(len, per_row), default=0))
        untested += sum(max(0, len(p) - rounds) for p in per_row)
        for k in range(rounds):  # one token per row per replay: rows keep their own random draws
            chosen = [p[k] for p in per_row if len(p) > k]
            for control in (False, True):
                ablations = ablate(chosen, control=control)
                flags = _outcome(hm, batch, clean, ablations)
                done = {a.row for a in ablations}
                single += [
                    {"control": control, "kind": t.kind, "role": t.role, "changed": flags["changed"][t.row],
                     "broke": flags["broke"][t.row] if correct[t.row] else None}
                    for t in chosen
                    if t.row in done
                ]  # fmt: skip
        for r, mine in enumerate(per_row):  # the example: a broken, else changed, else busiest row
            score = (bool(joint["broke"][r]), joint["changed"][r], len(mine))
            if mine and (example is None or score > example[0]):
                example = (score, trajectory, mine, r)
    ok = [i for i, c in enumerate(rows["correct"]) if c]
    ok_has = [i for i in ok if rows["has"][i]]
    with_t = [i for i, h in enumerate(rows["has"]) if h]
    wrong = [i for i, c in enumerate(rows["correct"]) if c is False]
    known = rows["correct"][0] is not None
    pick = lambda key, idx: stats.proportion_of([rows[key][i] for i in idx]) if known else None  # noqa: E731
    result = {
        "n": len(ps),
        "accuracy": stats.proportion_of(rows["correct"]) if known else None,
        "rows_with_transient": stats.proportion_of(rows["has"]),
        "transient_tokens": len(found),
        "tokens_per_row": len(found) / len(ps),
        "by_kind": tr.count_by(found, "kind"),
        "by_role": tr.count_by(found, "role"),
        "by_first_step": tr.count_by(found, "first"),
        "joint": {
            "depends_of_correct": pick("broke", ok),
            "control_depends_of_correct": pick("ctl_broke", ok),
            "depends_of_correct_with_transient": pick("broke", ok_has),
            "control_depends_of_correct_with_transient": pick("ctl_broke", ok_has),
            "changed_of_rows_with_transient": stats.proportion_of([rows["changed"][i] for i in with_t]),
            "control_changed_of_rows_with_transient": stats.proportion_of([rows["ctl_changed"][i] for i in with_t]),
            "whole_canvas_depends_of_correct": pick("all_broke", ok),
            "whole_canvas_changed": stats.proportion_of(rows["all_changed"]),
        },
        "control_coverage": covered / len(found) if found else None,
        "wrong_with_answer_transient": pick("answer_seen", wrong) if ps.answers is not None else None,
        "single": tr.single_rates(single),
        "single_untested": untested,
    }
    if hides:
        result["ground_truth"] = ground_truth_section(
            hm, ps, batches, seed=seed, batch_size=batch_size, gen_kwargs=gen_kwargs
        )
        result["gate"] = result["ground_truth"]["gate"]
    else:  # the generic finding: how many rows write transient tokens, re-measured under the alternative
        alternative = studies.run_prompt_set(hm, ps, batch_size=batch_size, seed=seed, **alternative_kwargs(gen_kwargs))
        alt_rows = [
            any(t.row == r for t in tr.trajectory_transient(batch.trajectory, special))
            for batch in alternative
            for r in range(len(batch.rows))
        ]
        result["gate"] = measure_gate(
            hm,
            batches,
            seed=seed,
            finding=result["rows_with_transient"],
            alternative_finding=stats.proportion_of(alt_rows),
            finding_name="share of rows with a transient token",
            **gen_kwargs,
        )
    return {"result": result, "rates": step_rates.rates(min_rows=MIN_ROWS), "example": example}


def run(
    model=None,
    *,
    n: int = 100,
    out_dir: str = "out/intermediate_context",
    seed: int = 0,
    quick: bool = False,
    tasks=None,
    replacement: str = "noise",
    max_rounds: int = 8,
    batch_size: int = studies.DEFAULT_BATCH_SIZE,
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Run the study on ``model`` (default: the ``gold`` organism); write metrics.json and figures; the metrics.

    ``tasks``: the model's own tasks by default (``quick``: n <= 24); a model diffinterp knows nothing
    about gets seeded random prompts (task ``random``), where correctness is unknown and only output
    changes are reported. ``gen_kwargs`` pass to generation (e.g. ``max_denoising_steps``).
    """
    import diffinterp as di

    if replacement not in ("noise", "final"):
        raise ValueError(f"replacement must be 'noise' or 'final', got {replacement!r}")
    hm = model if model is not None else di.load_model(ORGANISM)
    own = studies.model_tasks(hm)
    if quick:
        n = min(n, QUICK_N)
    tasks = tuple(tasks or own) if own else (studies.RANDOM_TASK,)
    per_task, rates, example = {}, {}, None
    with studies.StudyOutput(out_dir) as out:
        for task in tasks:
            found = study_task(
                hm, task, n, seed=seed, replacement=replacement, max_rounds=max_rounds, batch_size=batch_size,
                gen_kwargs=gen_kwargs,
            )  # fmt: skip
            per_task[task], rates[task] = found["result"], found["rates"]
            if found["example"] is not None and (example is None or found["example"][0] > example[1]):
                example = (task, *found["example"])
        out.figure(trf.rate_per_step_plot(rates), "transient_per_step")
        if example is not None:
            task, _, trajectory, tokens, row = example
            out.figure(trf.canvas_example_plot(trajectory, tokens, row, hm.tokenizer), f"canvas_example_{task}")
        known = all(r["accuracy"] is not None for r in per_task.values())
        key = "depends_of_correct" if known else "changed_of_rows_with_transient"
        ctl = "control_depends_of_correct" if known else "control_changed_of_rows_with_transient"
        whole = "whole_canvas_depends_of_correct" if known else "whole_canvas_changed"
        bars = {
            t: {"transient": r["joint"][key], "control": r["joint"][ctl], "whole canvas (step 0)": r["joint"][whole]}
            for t, r in per_task.items()
        }
        label = "correct answers broken" if known else "outputs changed (rows with transient tokens)"
        out.figure(trf.dependence_plot(bars, label), "dependence")
        out.metrics.update(
            summary=_summary(per_task, key, ctl, whole),
            per_task=per_task,
            gate={task: result["gate"] for task, result in per_task.items()},
            step_rates=rates,
            n=n,
            model=studies.model_info(hm),
            options={"tasks": list(tasks), "seed": seed, "quick": quick, "replacement": replacement,
                     "max_rounds": max_rounds, "batch_size": batch_size, **studies.generation_options(gen_kwargs)},
            notes=None if known else "no reference answers (model without the toy tokenizer): dependence is "
            "reported as output changes of rows with transient tokens",
        )  # fmt: skip
    return out.metrics


def _summary(per_task: dict[str, dict], key: str, ctl: str, whole: str) -> dict[str, Any]:
    """Flat headline numbers: per task the joint dependence, its control, the whole-canvas reference,
    the transient-token counts and how often a wrong answer's right answer was written and overwritten."""
    summary: dict[str, Any] = {"metric": key}
    for task, r in per_task.items():
        summary[f"{task}_tokens_per_row"] = round(r["tokens_per_row"], 3)
        summary[f"{task}_rows_with_transient"] = r["rows_with_transient"]["value"]
        for short, value in (("depends", r["joint"][key]), ("control", r["joint"][ctl]), ("whole", r["joint"][whole])):
            summary[f"{task}_{short}"] = None if value is None else value["value"]
            if value is not None and value["value"] is not None:
                summary[f"{task}_{short}_ci"] = f"[{value['ci_low']:.3f}, {value['ci_high']:.3f}]"
        seen = r["wrong_with_answer_transient"]
        summary[f"{task}_wrong_with_answer_transient"] = None if seen is None else seen["value"]
        truth = r.get("ground_truth")
        if truth:
            trace = truth["hidden_values"]
            summary[f"{task}_hidden_written_then_overwritten"] = trace["written_before_last_step"]["value"]
            summary[f"{task}_hidden_written_by_needed_settle"] = trace["written_by_needed_settle"]["value"]
            for mode, acc in truth["bottlenecks"].items():
                summary[f"{task}_accuracy_{mode}"] = None if acc is None else acc["value"]
        summary[f"{task}_gate"] = r["gate"]["verdict"]
    return summary
