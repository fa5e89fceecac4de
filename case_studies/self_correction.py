"""Self-correction: does the model rewrite an answer after the reasoning below it settles?

A masked-diffusion model never revisits a committed token; DiffusionGemma's uniform-state sampler
may: every position is predicted again at every step, and a different token can be accepted there
later. On the ``answer-first`` organism (the answer is written *before* its scratchpad), a first
guess at the answer can only be corrected once the reasoning after it settles: the paper's
retroactive self-correction.

    from case_studies import self_correction
    metrics = self_correction.run(n=100, out_dir="out/self_correction")

1. **Revisions** (any task): accepted tokens overwritten by a different accepted token later.
2. **Wrong -> right corrections** (tasks with answer positions in their ground truth): rows whose
   answer's argmax was a wrong value at some step and is right at the end; of those, the ones whose
   correction came *after* the scratchpad had settled (retroactive), and those where a wrong answer
   had been *accepted* first (a committed guess, rewritten).
3. **Causal test**: corrupt the scratchpad's last value on the canvas (and in the self-conditioning
   input) from the step it settles, replay with the same random draws, and see whether the answer
   follows it (ground truth: the answer is causally downstream of the scratchpad iff it follows).
4. **The dynamics gate** of the headline finding (the share of right answers that were wrong first).

It is also the worked example of ``docs/writing-a-case-study.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffinterp import stats
from diffinterp.figures.style import STYLE
from diffinterp.organisms.catalog import TASKS
from diffinterp.organisms.task import Example
from diffinterp.phenomena import settling as st
from diffinterp.studies import StudyOutput, model_info, model_tasks, prompt_set, rerun_kwargs, run_prompt_set
from diffinterp.studies.gate import alternative_kwargs, measure_gate
from diffinterp.studies.runs import generation_options

ORGANISM = "answer-first"


def revisions(canvas_out: torch.Tensor, accepted: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Where an accepted token replaces a different token accepted earlier: ``BoolTensor [S, B, P]``.

    ``canvas_out`` ``[S, B, P]`` (token ids after each step), ``accepted`` ``[S, B, P]``, ``active``
    ``[S, B]`` (rows still denoising; a finished row's steps never count).
    """
    if not canvas_out.shape == accepted.shape or canvas_out.shape[:2] != active.shape:
        raise ValueError(
            f"need canvas_out and accepted [S, B, P] and active [S, B]; got {list(canvas_out.shape)}, "
            f"{list(accepted.shape)}, {list(active.shape)}"
        )
    committed = torch.full_like(canvas_out[0], -1)  # last accepted token per position, -1 = none yet
    out = torch.zeros_like(accepted)
    for step in range(canvas_out.shape[0]):
        now = accepted[step] & active[step, :, None]
        out[step] = now & (committed >= 0) & (canvas_out[step] != committed)
        committed = torch.where(now, canvas_out[step], committed)
    return out


def corrections(
    argmax: torch.Tensor,
    accepted: torch.Tensor,
    active: torch.Tensor,
    answer: torch.Tensor,
    target: torch.Tensor,
    reasoning_settle: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Wrong -> right corrections of the answer, per row (``BoolTensor [B]`` each).

    ``argmax`` / ``accepted`` ``[S, B, P]``, ``active`` ``[S, B]``; ``answer`` ``[B, P]`` the answer's
    positions; ``target`` ``[B, P]`` the right tokens there; ``reasoning_settle`` ``[B]`` the step the
    scratchpad settled. ``right_at_end``: the answer is right at the row's last step;
    ``was_wrong``: right at the end and, at some earlier active step, its argmax held a full wrong
    answer (every position a token other than the target, somewhere); ``after_reasoning``: such a
    row whose answer became right (for good) only after ``reasoning_settle``; ``accepted_wrong``: such
    a row where a wrong answer token had been accepted.
    """
    last = st.last_steps(active)
    steps = torch.arange(argmax.shape[0])[:, None]
    live = (steps <= last[None]) & active.bool()  # [S, B]
    answer = answer.bool()
    right = ((argmax == target[None]) | ~answer[None]).all(-1)  # [S, B]: the whole answer right
    wrong = ((argmax != target[None]) & answer[None]).any(-1) & live  # some answer position wrong
    at_end = right[last, torch.arange(len(last))]
    holds = (right | (steps > last[None])).flip(0).cumprod(0).flip(0).bool()  # right from s to the end
    fixed_at = holds.float().argmax(0)  # first step from which the answer stays right
    was_wrong = at_end & (wrong & (steps < fixed_at[None])).any(0)
    accepted_wrong = at_end & (wrong[..., None] & accepted.bool() & answer[None] & (argmax != target[None])).any((0, 2))
    return {
        "right_at_end": at_end,
        "was_wrong": was_wrong,
        "after_reasoning": was_wrong & (fixed_at > reasoning_settle),
        "accepted_wrong": accepted_wrong,
    }


def _positions(batch, canvas: int):
    """``(answer mask, mask of the scratchpad's last value)`` ``[B, P]`` from the ground truth, or None."""
    task = TASKS.get(batch.prompts.task)
    if task is None or task.truth is None or batch.prompts.texts is None:
        return None
    answer = torch.zeros(len(batch.rows), canvas, dtype=torch.bool)
    scratch = torch.zeros_like(answer)
    for row, (text, reference) in enumerate(zip(batch.prompts.texts, batch.prompts.answers, strict=True)):
        truth = task.truth(Example(batch.prompts.task, text, reference))
        if "answer_positions" not in truth or "scratch_positions" not in truth:
            return None
        answer[row, truth["answer_positions"]] = True
        last = truth["scratch_positions"][-1]  # one value's positions (a list), or one position
        scratch[row, last if isinstance(last, list) else [last]] = True
    return answer, scratch


def _targets(hm, batch) -> torch.Tensor:
    """The reference canvases (answer ids, EOS, pads) ``[B, P]`` of a batch."""
    eos, pad = hm.model.generation_config.eos_token_id, hm.model.generation_config.pad_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    canvas = hm.config.canvas_length
    out = torch.full((len(batch.rows), canvas), pad, dtype=torch.long)
    for row, reference in enumerate(batch.prompts.answers):
        ids = hm.tokenizer(reference, add_special_tokens=False)["input_ids"] + [eos]
        out[row, : len(ids)] = torch.tensor(ids[:canvas])
    return out


def correction_counts(hm, batches) -> dict | None:
    """Wrong -> right corrections over the batches (``None`` without answer and scratchpad positions)."""
    flags: dict[str, list[bool]] = {}
    for batch in batches:
        found = _positions(batch, hm.config.canvas_length)
        if found is None:
            return None
        answer, scratch = found
        target = _targets(hm, batch)
        traj = batch.trajectory
        argmax, accepted, active = (traj.stack(f).cpu() for f in ("argmax", "accepted", "active"))
        settle = st.settle_steps(argmax, accepted, active)
        reasoning = st.region_step(settle, scratch)
        for key, values in corrections(argmax, accepted, active, answer, target, reasoning).items():
            flags.setdefault(key, []).extend(values.tolist())
    right = [i for i, r in enumerate(flags["right_at_end"]) if r]
    pick = lambda key: stats.proportion_of([flags[key][i] for i in right])  # noqa: E731
    return {
        "right_at_end": stats.proportion_of(flags["right_at_end"]),
        "right_answers_that_were_wrong": pick("was_wrong"),
        "corrected_after_reasoning_settled": pick("after_reasoning"),
        "corrected_after_accepting_a_wrong_answer": pick("accepted_wrong"),
    }


def causal_test(hm, batch, *, shift: int = 3) -> dict | None:
    """Corrupt the scratchpad's last value (canvas and self-conditioning) from the step it settles;
    does the answer follow (ground truth: it copies that value)?"""
    found = _positions(batch, hm.config.canvas_length)
    if found is None:
        return None
    answer, scratch = found
    traj = batch.trajectory
    argmax, accepted, active = (traj.stack(f).cpu() for f in ("argmax", "accepted", "active"))
    settle, final = st.settle_steps(argmax, accepted, active), traj.block(0).final_canvas.cpu()
    digits = [hm.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    # corrupt the last digit of the last value (its units digit): the answer's units digit should follow
    position = torch.where(scratch, torch.arange(scratch.shape[1]), -1).max(1).values
    reader = torch.where(answer, torch.arange(answer.shape[1]), -1).max(1).values
    rows = torch.arange(len(position))
    clean = final[rows, position]
    subject = torch.isin(clean, torch.tensor(digits)) & (settle[rows, position] < settle[rows, reader])
    if batch.correct is not None:
        subject &= batch.correct.bool().cpu()
    corrupted = st.corrupt_tokens(clean, digits, shift)
    with torch.no_grad():
        replacement = hm.model.model.decoder.embed_tokens(corrupted.to(hm.model.device))
    when = torch.where(subject, settle[rows, position], torch.full_like(position, -1))
    hooks = [
        ("decoder.hook_embed", st.replace_positions_hook(replacement, position, when, persist=True)),
        ("decoder.sc.hook_soft_embed", st.replace_positions_hook(replacement, position, when, persist=True, skip_zero=True)),
    ]  # fmt: skip
    new = hm.run_with_hooks(traj.prompt_ids, fwd_hooks=hooks, **rerun_kwargs(batch)).block(0).final_canvas.cpu()
    outcomes = [
        st.outcome([int(new[r, reader[r]])], [int(final[r, reader[r]])], [int(corrupted[r])])
        for r in rows[subject].tolist()
    ]
    return {
        "n_subjects": len(outcomes),
        "shift": shift,
        **{kind: stats.proportion_of([o == kind for o in outcomes]) for kind in ("follows", "unchanged", "other")},
    }


def _figure(per_task: dict, per_step: list[float]):
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(7.0, 2.6))
        names = list(per_task)
        values = [per_task[t]["samples_revised"]["value"] or 0.0 for t in names]
        lows = [v - per_task[t]["samples_revised"]["ci_low"] for v, t in zip(values, names, strict=True)]
        highs = [per_task[t]["samples_revised"]["ci_high"] - v for v, t in zip(values, names, strict=True)]
        left.bar(names, values, yerr=[lows, highs], color="#0072B2", capsize=3)
        left.set_ylabel("samples with a revision")
        left.set_ylim(0, 1)
        right.plot(range(len(per_step)), per_step, marker="o", color="#D55E00")
        right.xaxis.get_major_locator().set_params(integer=True)
        right.set_xlabel("denoising step")
        right.set_ylabel("revisions per sample")
        fig.suptitle("Self-correction: accepted tokens overwritten later (95% CI)")
    return fig


def run(
    model=None, *, n: int = 100, out_dir: str | Path = "out/self_correction", seed: int = 0, quick: bool = False,
    tasks=None, **gen_kwargs,
) -> dict:  # fmt: skip
    """Revisions, corrections, the causal test and the gate on ``model`` (default: the ``answer-first``
    organism); writes metrics and a figure."""
    import diffinterp as di

    hm = model if model is not None else di.load_model(ORGANISM)
    n = min(n, 24) if quick else n
    tasks = tuple(tasks or model_tasks(hm) or ("random",))
    per_task, by_step, n_samples = {}, {}, 0  # by_step: step -> revisions summed over samples
    with StudyOutput(out_dir) as out:
        for task in tasks:
            flags, correct = [], []
            prompts = prompt_set(hm, task, n, seed=seed)
            task = prompts.task  # "random" on a model without known tasks
            batches = list(run_prompt_set(hm, prompts, seed=seed, **gen_kwargs))
            for batch in batches:
                traj = batch.trajectory
                found = revisions(traj.stack("canvas_out"), traj.stack("accepted"), traj.stack("active"))
                flags += found.any(2).any(0).tolist()
                for step, count in enumerate(found.sum((1, 2)).tolist()):
                    by_step[step] = by_step.get(step, 0) + count
                if batch.correct is not None:
                    correct += batch.correct.tolist()
            n_samples += len(flags)
            result = {"samples_revised": stats.proportion_of(flags)}
            if correct:  # does revising go with ending right? (needs reference answers)
                pairs = list(zip(correct, flags, strict=True))
                result["accuracy_revised"] = stats.proportion_of([c for c, f in pairs if f])
                result["accuracy_unrevised"] = stats.proportion_of([c for c, f in pairs if not f])
            result["corrections"] = correction_counts(hm, batches)
            result["causal_test"] = causal_test(hm, batches[0])
            alternative = list(run_prompt_set(hm, prompts, seed=seed, **alternative_kwargs(gen_kwargs)))
            if result["corrections"] is not None:
                finding = result["corrections"]["right_answers_that_were_wrong"]
                alt_finding = correction_counts(hm, alternative)["right_answers_that_were_wrong"]
                name = "share of right answers that were wrong first"
            else:
                finding = result["samples_revised"]
                alt_flags = [
                    v
                    for b in alternative
                    for v in revisions(*(b.trajectory.stack(f) for f in ("canvas_out", "accepted", "active")))
                    .any(2)
                    .any(0)
                    .tolist()
                ]
                alt_finding, name = stats.proportion_of(alt_flags), "share of samples with a revision"
            result["gate"] = measure_gate(
                hm, batches, seed=seed, finding=finding, alternative_finding=alt_finding, finding_name=name,
                **gen_kwargs,
            )  # fmt: skip
            per_task[task] = result
        per_step = [by_step.get(step, 0) / n_samples for step in range(max(by_step, default=-1) + 1)]
        out.figure(_figure(per_task, per_step), "revisions")
        summary = {}
        for task, result in per_task.items():
            summary[f"{task}_samples_revised"] = result["samples_revised"]["value"]
            if result["corrections"]:
                for key in ("right_answers_that_were_wrong", "corrected_after_reasoning_settled"):
                    summary[f"{task}_{key}"] = result["corrections"][key]["value"]
            if result["causal_test"]:
                summary[f"{task}_causal_follows"] = result["causal_test"]["follows"]["value"]
            summary[f"{task}_gate"] = result["gate"]["verdict"]
        out.metrics.update(
            summary=summary,
            per_task=per_task,
            gate={task: result["gate"] for task, result in per_task.items()},
            revisions_per_sample_by_step=per_step,
            n=n,
            model=model_info(hm),
            options={
                "tasks": list(per_task),
                "seed": seed,
                "quick": quick,
                **generation_options(gen_kwargs),
            },
        )
    return out.metrics
