"""Acceptance: what share of the canvas the sampler accepts at each denoising step, and how many
steps a canvas takes, with accuracy where the prompts have reference answers.

An external case study: it lives in its own package and registers in the ``diffinterp.case_studies``
entry-point group, so ``diffinterp case-study acceptance`` runs it with every shared flag
(``--model``, ``--n``, ``--seed``, ``--quick``, ``--tasks``, ``--bottleneck``, ``--steps``).
"""

from __future__ import annotations

import torch

import diffinterp as di
from diffinterp import stats
from diffinterp.studies import StudyOutput, model_info, prompt_set, run_prompt_set, uses_toy_tokenizer


def accepted_share(accepted: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step, the summed share of canvas positions accepted over the rows still active, and the
    number of those rows: ``accepted`` ``[S, B, P]``, ``active`` ``[S, B]`` -> two ``[S]`` tensors."""
    return (accepted & active[:, :, None]).float().mean(2).sum(1), active.float().sum(1)


def run(model=None, *, n=100, out_dir="out/acceptance", seed=0, quick=False, tasks=("seq",), **gen_kwargs) -> dict:
    hm = model if model is not None else di.load_model()
    n = min(n, 12) if quick else n
    tasks = tasks if uses_toy_tokenizer(hm) else ("random",)
    per_task = {}
    with StudyOutput(out_dir) as out:
        for task in tasks:
            share, rows, steps, correct = {}, {}, [], []
            for batch in run_prompt_set(hm, prompt_set(hm, task, n, seed=seed), seed=seed, **gen_kwargs):
                traj = batch.trajectory
                summed, active = accepted_share(traj.stack("accepted"), traj.stack("active"))
                for step, (s, r) in enumerate(zip(summed.tolist(), active.tolist(), strict=True)):
                    share[step], rows[step] = share.get(step, 0.0) + s, rows.get(step, 0.0) + r
                steps += traj.stack("active").sum(0).tolist()  # steps each row ran in block 0
                correct += batch.correct.tolist() if batch.correct is not None else []
            per_task[task] = {
                "accepted_share_by_step": [share[s] / rows[s] if rows[s] else None for s in sorted(share)],
                "steps_per_canvas": stats.mean_ci(steps, seed=seed),
                "accuracy": stats.proportion_of(correct) if correct else None,
            }
        out.metrics.update(
            summary={f"{task}_steps_per_canvas": r["steps_per_canvas"]["value"] for task, r in per_task.items()},
            per_task=per_task,
            n=n,
            model=model_info(hm),
            options={"tasks": list(tasks), "seed": seed, "quick": quick, **gen_kwargs},
        )
    return out.metrics
