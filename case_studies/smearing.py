"""Token and sequence smearing: how often an intermediate canvas spreads a token over neighbouring
positions, or shifts a run of tokens, before the canvas resolves (definitions in
:mod:`diffinterp.phenomena.smearing`).

    from case_studies import smearing
    metrics = smearing.run(n=100, out_dir="out/smearing")     # the smear organism

Per task (by default the ``smear`` organism's ``filter``, ``dedup`` and the ``serial`` control; a
given model's own tasks; seeded random prompts on a model diffinterp does not know): one seeded run
with recorded logits; every intermediate canvas is scanned for token smears (argmax and sampled
canvases), soft token smears (logits) and sequence smears (against the final canvas and the next
step's). Rates per sample, per canvas, per step and relative step (95% CIs); the sample rate among
correct vs incorrect outputs and per output length; examples; figures.

**Against the ground truth** (tasks with a planted smear: ``filter``/``dedup`` answers begin with
an optional spacer with probability 1/2, so both alignments are valid): the share of probability
mass on the spaced alignment at every step (:func:`~diffinterp.phenomena.smearing.alignment_share`:
0.5 is the planted 50/50 superposition), the share of final outputs that took it, and the
sequence-smear rate against the ``serial`` control, where no position depends on the data. The
dynamics gate (:mod:`diffinterp.phenomena.gate`) checks the headline (the sequence-smear sample
rate) under an alternative sampler setting.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from diffinterp import stats
from diffinterp.figures import smearing as smf
from diffinterp.figures.canvas import token_labels
from diffinterp.organisms.catalog import TASKS
from diffinterp.organisms.task import Example
from diffinterp.phenomena import smearing as sm
from diffinterp.records.decoding import output_tokens, special_ids
from diffinterp.studies.gate import alternative_kwargs, measure_gate
from diffinterp.studies.output import StudyOutput
from diffinterp.studies.prompts import RANDOM_TASK, model_tasks, prompt_set
from diffinterp.studies.runs import generation_options, model_info, run_prompt_set

ORGANISM = "smear"

QUICK_N = 24
#: Soft smears read the recorded logits of a whole batch; above this many bytes (a 262k vocabulary,
#: 256-token canvases) they are skipped unless asked for, and metrics say so.
SOFT_LOGITS_BUDGET = 2 * 2**30


def soft_logits_bytes(hm, batch_size: int, gen_kwargs: dict) -> int:
    """Bytes of float32 logits one batch records over all its steps (what the soft detector reads)."""
    steps = gen_kwargs.get("max_denoising_steps") or hm.model.generation_config.max_denoising_steps or 48
    return 4 * batch_size * hm.config.canvas_length * hm.config.text_config.vocab_size * int(steps)


HEADLINE = ("token", "sequence")
N_EXAMPLES = 3


def _example(hm, task: str, kind: str, batch, event, offset: int) -> dict[str, Any]:
    """One event of a batch with the decoded canvas at its step and the final canvas (for the doc)."""
    field = "sampled" if kind == "token_sampled" else "argmax"
    canvas = batch.trajectory.stack(field, event.block)[event.step, event.row]
    prompts = batch.prompts
    prompt = prompts.texts[event.row] if prompts.texts else " ".join(token_labels(prompts.input_ids[event.row]))
    example = {
        "kind": kind,
        "task": task,
        **asdict(replace(event, row=event.row + offset)),
        "prompt": prompt,
        "canvas": " ".join(token_labels(canvas, hm.tokenizer)),
        "final": " ".join(token_labels(batch.trajectory.blocks[event.block].final_canvas[event.row], hm.tokenizer)),
    }
    if kind == "sequence_next":
        following = batch.trajectory.stack("argmax", event.block)[event.step + 1, event.row]
        example["next_canvas"] = " ".join(token_labels(following, hm.tokenizer))
    return example


def _displacements(trajectory, eos: int, ignore, max_distance: int):
    """Per block, :func:`sm.displacement_counts` of the argmax canvases over the intermediate canvases."""
    finals = [record.final_canvas.cpu() for record in trajectory.blocks]
    for index, live in enumerate(sm.live_rows(finals, eos)):
        mask = sm.intermediate_mask(trajectory.stack("active", index).cpu(), live)
        canvases = trajectory.stack("argmax", index).cpu()
        yield sm.displacement_counts(canvases, finals[index], mask, max_distance=max_distance, ignore=ignore)


def planted_alignments(hm, batch) -> list[list[list[int]]] | None:
    """Per row, the token ids of the task's valid answers (each with EOS) when the task has two
    (a planted smear), else ``None``."""
    task = TASKS.get(batch.prompts.task)
    if task is None or task.alternatives is None or batch.prompts.texts is None:
        return None
    eos, _ = special_ids(hm)
    out = []
    for text, answer in zip(batch.prompts.texts, batch.prompts.answers, strict=True):
        options = task.alternatives(Example(batch.prompts.task, text, answer))
        if len(options) != 2:
            return None
        out.append([hm.tokenizer(option, add_special_tokens=False)["input_ids"] + [eos] for option in options])
    return out


def planted_smear(hm, batches) -> dict[str, Any] | None:
    """The planted smear against its ground truth: the spaced alignment's share of the mass per step
    (mean over rows still active, 95% CI) and the share of final outputs that took it."""
    per_step: dict[int, list[float]] = {}
    spaced = []
    for batch in batches:
        alignments = planted_alignments(hm, batch)
        if alignments is None:
            return None
        traj = batch.trajectory
        probs = torch.softmax(traj.stack("logits").float(), -1)  # [S, B, P, V]
        share = sm.alignment_share(sm.alignment_mass(probs, alignments))  # [S, B]
        active = traj.stack("active").cpu()
        for step in range(share.shape[0]):
            per_step.setdefault(step, []).extend(share[step][active[step]].tolist())
        final = traj.block(0).final_canvas.cpu().tolist()
        spaced += [row[: len(a[1]) - 1] == a[1][:-1] for row, a in zip(final, alignments, strict=True)]
    return {
        "spaced_share_by_step": {str(s): stats.mean_ci(v) for s, v in sorted(per_step.items())},
        "spaced_share_step0": stats.mean_ci(per_step.get(0, [])),
        "final_outputs_spaced": stats.proportion_of(spaced),
        "ground_truth": "each alignment valid with probability 1/2: a 50/50 superposition reads 0.5",
    }


def _grouped(scan: sm.SmearScan, groups: dict[Any, list[int]]) -> dict[str, dict]:
    return {str(key): stats.proportion_of(sm.row_flags(scan, rows)) for key, rows in groups.items() if rows}


def run(
    model=None,
    *,
    n: int = 100,
    out_dir: str | Path = "out/smearing",
    seed: int = 0,
    quick: bool = False,
    tasks=None,
    window: int = 2,
    min_width: int = 2,
    min_run: int = 3,
    max_shift: int = 3,
    max_unshifted: float = 0.5,
    soft_threshold: float = 0.3,
    include_special: bool = False,
    batch_size: int = 64,
    soft: bool | None = None,
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Measure smearing on ``model`` (default: the ``smear`` organism); write metrics.json and figures."""
    import diffinterp as di

    hm = model if model is not None else di.load_model(ORGANISM)
    n = min(n, QUICK_N) if quick else n
    own = model_tasks(hm)
    toy = bool(own)
    tasks = list(tasks or own or (RANDOM_TASK,))
    eos, pad = special_ids(hm)
    ignore = () if include_special else (eos, pad)
    options = dict(window=window, min_width=min_width, min_run=min_run, max_shift=max_shift)
    options.update(max_unshifted=max_unshifted, threshold=soft_threshold)
    logits_bytes = soft_logits_bytes(hm, min(batch_size, n), gen_kwargs)
    soft = logits_bytes <= SOFT_LOGITS_BUDGET if soft is None else soft
    kinds = sm.KINDS if soft else tuple(kind for kind in sm.KINDS if kind != "soft")
    notes = [] if toy else ["a model without known tasks: random prompts, no answers; by_correctness is None"]
    if not soft:
        notes.append(f"soft smears skipped: recording the logits would take {logits_bytes / 2**30:.0f} GiB per batch")
    results, examples, shifts, showcase = {}, [], {}, None
    for task in tasks:
        prompts = prompt_set(hm, task, n, seed=seed)
        scans = {kind: sm.SmearScan(kind) for kind in kinds}
        correct, lengths, displaced = {}, {}, {}
        batches = list(run_prompt_set(hm, prompts, batch_size=batch_size, seed=seed, record_logits=soft, **gen_kwargs))
        for batch in batches:
            offset = batch.rows[0]
            found = {
                kind: sm.scan_trajectory(batch.trajectory, kind, eos_id=eos, ignore=ignore, **options) for kind in kinds
            }
            for kind, scan in found.items():
                scans[kind].extend(scan, offset)
                have = sum(e["task"] == task and e["kind"] == kind for e in examples)
                for event in scan.events[: max(0, N_EXAMPLES - have)]:
                    examples.append(_example(hm, task, kind, batch, event, offset))
            for count in _displacements(batch.trajectory, eos, ignore, max_shift + 1):
                for d, (k, m) in count.items():
                    displaced[d] = [a + b for a, b in zip(displaced.get(d, (0, 0)), (k, m), strict=True)]
            first = next((e for kind in HEADLINE for e in found[kind].events), None)
            # Show one smear, preferably on a task with data-dependent positions; any row if none is found.
            varied = ("filter", "dedup", "seq")
            better = showcase is None or not showcase[-1] or (task in varied and showcase[0] not in varied)
            if first is not None and better:
                shown = [
                    e for kind in HEADLINE for e in found[kind].events if (e.row, e.block) == (first.row, first.block)
                ]
                showcase = (task, batch.trajectory, first.row + offset, first.row, first.block, shown)
            if showcase is None:
                showcase = (task, batch.trajectory, offset, 0, 0, [])
            new = batch.trajectory.new_tokens()
            for i, row in enumerate(batch.rows):
                lengths.setdefault(len(output_tokens(new[i], eos, pad)), []).append(row)
                if batch.correct is not None:
                    correct.setdefault("correct" if bool(batch.correct[i]) else "incorrect", []).append(row)
        rows = list(range(len(prompts)))
        results[task] = {
            kind: {
                **sm.smear_rates(scan, rows),
                "by_correctness": _grouped(scan, correct) if correct else None,
                "by_output_length": _grouped(scan, dict(sorted(lengths.items()))),
            }
            for kind, scan in scans.items()
        }
        results[task]["accuracy"] = stats.proportion(len(correct.get("correct", [])), len(prompts)) if correct else None
        results[task]["displacement"] = {d: stats.proportion(k, m) for d, (k, m) in sorted(displaced.items())}
        shifts[task] = [e.shift for e in scans["sequence"].events]
        results[task]["shifts"] = {str(k): shifts[task].count(k) for k in sorted(set(shifts[task]))}
        results[task]["token_widths"] = [e.width for e in scans["token"].events]
        results[task]["planted"] = planted_smear(hm, batches) if soft else None
        headline = results[task]["sequence"]["samples"]
        alternative = list(
            run_prompt_set(hm, prompts, batch_size=batch_size, seed=seed, **alternative_kwargs(gen_kwargs))
        )
        alt_scan = sm.SmearScan("sequence")
        for batch in alternative:
            alt_scan.extend(sm.scan_trajectory(batch.trajectory, "sequence", eos_id=eos, ignore=ignore, **options),
                            batch.rows[0])  # fmt: skip
        results[task]["gate"] = measure_gate(
            hm,
            batches,
            seed=seed,
            finding=headline,
            alternative_finding=sm.smear_rates(alt_scan, list(range(len(prompts))))["samples"],
            finding_name="share of samples with a sequence smear",
            **gen_kwargs,
        )

    with StudyOutput(out_dir) as out:
        out.figure(smf.rate_bars({t: {k: results[t][k]["samples"] for k in kinds} for t in tasks}), "rate_per_task")
        for kind in HEADLINE:
            curves = {t: results[t][kind]["per_step"] for t in tasks}
            out.figure(
                smf.rate_per_step(curves, title=f"Intermediate canvases with a {kind} smear"), f"{kind}_per_step"
            )
        relative = {t: results[t]["token"]["per_relative_step"] for t in tasks}
        fig = smf.rate_per_step(relative, "relative step (step / last step)", "Token smears by relative step")
        out.figure(fig, "token_per_relative_step")
        out.figure(smf.shift_histogram(shifts, max_shift), "shift_histogram")
        out.figure(smf.displacement_profile({t: results[t]["displacement"] for t in tasks}), "displacement_profile")
        task, trajectory, row, local, block, shown = showcase
        title = f"{task} prompt {row}" + ("" if shown else " (no smear found)")
        out.figure(smf.smear_evolution(trajectory, local, block, hm.tokenizer, shown, title), "example_evolution")
        out.metrics.update(
            summary=_summary(results, tasks),
            per_task=results,
            gate={task: results[task]["gate"] for task in tasks},
            examples=examples,
            n=n,
            tasks=tasks,
            model=model_info(hm),
            options={
                **options,
                "include_special": include_special,
                "seed": seed,
                "quick": quick,
                "batch_size": batch_size,
                "soft": soft,
                **generation_options(gen_kwargs),
            },
            notes=notes,
        )
    return out.metrics


def _summary(results: dict, tasks: list[str]) -> dict[str, Any]:
    """Headline numbers per task: samples with a token / soft / sequence smear, canvases with a token smear."""
    summary: dict[str, Any] = {}
    for task in tasks:
        for kind in ("token", "soft", "sequence"):
            if kind in results[task]:
                summary[f"{task}.{kind}.sample_rate"] = results[task][kind]["samples"]["value"]
        summary[f"{task}.token.canvas_rate"] = results[task]["token"]["canvases"]["value"]
        summary[f"{task}.n_intermediate_canvases"] = results[task]["token"]["canvases"]["n"]
        if results[task]["accuracy"] is not None:
            summary[f"{task}.accuracy"] = results[task]["accuracy"]["value"]
        planted = results[task].get("planted")
        if planted:
            summary[f"{task}.planted_spaced_share_step0"] = planted["spaced_share_step0"]["value"]
            summary[f"{task}.final_outputs_spaced"] = planted["final_outputs_spaced"]["value"]
        summary[f"{task}.gate"] = results[task]["gate"]["verdict"]
    return summary
