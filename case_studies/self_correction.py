"""Self-correction: how often does the sampler overwrite a token it had already accepted?

A masked-diffusion model never revisits a committed token; DiffusionGemma's uniform-state sampler
may: a position accepted at step s is predicted again at every later step, and a different token
can be accepted there later. This study counts such *revisions* per task and step, and asks
whether revised samples end correct more or less often than the rest.

    from case_studies import self_correction
    metrics = self_correction.run(n=100, out_dir="out/self_correction")

It is the worked example of ``docs/writing-a-case-study.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffinterp import stats
from diffinterp.studies.output import StudyOutput
from diffinterp.studies.prompts import prompt_set, uses_toy_tokenizer
from diffinterp.studies.runs import model_info, run_prompt_set

DEFAULT_TASKS = ("arith", "seq", "hop", "mon")


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


def _figure(per_task: dict, per_step: list[float]):
    import matplotlib.pyplot as plt

    from diffinterp.figures.canvas import STYLE

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
        right.set_xlabel("denoising step")
        right.set_ylabel("revisions per sample")
        fig.suptitle("Self-correction: accepted tokens overwritten later (95% CI)")
    return fig


def run(
    model=None, *, n: int = 100, out_dir: str | Path = "out/self_correction", seed: int = 0, quick: bool = False,
    tasks=DEFAULT_TASKS, **gen_kwargs,
) -> dict:  # fmt: skip
    """Revision rates per task and step on ``model`` (default: the bundled one); writes metrics and a figure."""
    import diffinterp as di

    hm = model if model is not None else di.load_model()
    n = min(n, 24) if quick else n
    tasks = tasks if uses_toy_tokenizer(hm) else tasks[:1]  # random prompts: one set is enough
    per_task, by_step, n_samples = {}, {}, 0  # by_step: step -> revisions summed over samples
    with StudyOutput(out_dir) as out:
        for task in tasks:
            flags, correct = [], []
            prompts = prompt_set(hm, task, n, seed=seed)
            task = prompts.task  # "random" on a model without the toy tasks
            for batch in run_prompt_set(hm, prompts, seed=seed, **gen_kwargs):
                traj = batch.trajectory
                found = revisions(traj.stack("canvas_out"), traj.stack("accepted"), traj.stack("active"))
                flags += found.any(2).any(0).tolist()
                for step, count in enumerate(found.sum((1, 2)).tolist()):
                    by_step[step] = by_step.get(step, 0) + count
                if batch.correct is not None:
                    correct += batch.correct.tolist()
            n_samples += len(flags)
            per_task[task] = {"samples_revised": stats.proportion_of(flags)}
            if correct:  # does revising go with ending right? (needs reference answers)
                pairs = list(zip(correct, flags, strict=True))
                per_task[task]["accuracy_revised"] = stats.proportion_of([c for c, f in pairs if f])
                per_task[task]["accuracy_unrevised"] = stats.proportion_of([c for c, f in pairs if not f])
        per_step = [by_step.get(step, 0) / n_samples for step in range(max(by_step, default=-1) + 1)]
        out.figure(_figure(per_task, per_step), "revisions")
        out.metrics.update(
            summary={
                f"{task}_samples_revised": result["samples_revised"]["value"] for task, result in per_task.items()
            },
            per_task=per_task,
            revisions_per_sample_by_step=per_step,
            n=n,
            model=model_info(hm),
            options={"tasks": list(per_task), "seed": seed, "quick": quick, **gen_kwargs},
        )
    return out.metrics
