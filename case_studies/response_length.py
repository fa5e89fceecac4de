"""Early response-length prediction: from which step does the canvas know how long the answer is?

    from case_studies import response_length
    metrics = response_length.run(n=100, out_dir="out/response_length")   # the smear organism

At each step, each position's probability of the end tokens (``<eos>`` and padding) gives a
predicted answer length (the first position where it exceeds one half;
:mod:`diffinterp.phenomena.response_length`). Per task: the share of rows whose prediction equals
the final output's length at each step, the step from which it stays right, and the share right
from step 0 (95% CIs), beside the paper's "accurate by step 2".

Ground truth on the ``smear`` organism: ``filter``/``dedup`` answers begin with a spacer with
probability 1/2, so their length is a coin flip until the model commits to an alignment (the
prediction cannot be right from step 0 more than about half the time); the ``serial`` control has a
fixed length. Probabilities are read from each step's logits as they are computed (nothing
vocabulary-sized is kept), so the study runs at the 26B size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffinterp import studies
from diffinterp.figures.style import OKABE_ITO, STYLE
from diffinterp.phenomena import response_length as rl
from diffinterp.studies.gate import alternative_kwargs, measure_gate

ORGANISM = "smear"
QUICK_N = 24
PAPER_STEP = 2  # "accurate by step 2"


def _measure(hm, prompts, *, seed, gen_kwargs) -> tuple[dict, list]:
    eos, pad = studies.special_ids(hm)
    reduce = lambda logits, step: rl.end_probability(logits, sorted({eos, pad}))  # noqa: E731
    batches = list(studies.run_prompt_set(hm, prompts, seed=seed, reduce_logits=reduce, **gen_kwargs))
    predicted, truth, active = [], [], []
    steps = max(len(b.reduced) for b in batches)
    for batch in batches:
        ends = torch.stack([batch.reduced[s] for s in sorted(batch.reduced)])  # [S, B, P]
        pred = rl.predicted_lengths(ends)
        pad_rows = steps - pred.shape[0]
        live = batch.trajectory.stack("active").cpu()
        predicted.append(torch.cat([pred, pred[-1:].expand(pad_rows, -1)]) if pad_rows else pred)
        active.append(torch.cat([live, torch.zeros(pad_rows, live.shape[1], dtype=torch.bool)]) if pad_rows else live)
        truth.append(rl.output_lengths(batch.trajectory.block(0).final_canvas.cpu(), eos))
    predicted, truth, active = torch.cat(predicted, 1), torch.cat(truth), torch.cat(active, 1)
    summary = rl.length_summary(predicted, truth, active, seed=seed)
    at = min(PAPER_STEP, predicted.shape[0] - 1)
    summary["right_by_paper_step"] = summary["right_by_step"][str(at)]
    summary["paper_step"] = at
    return summary, batches


def _figure(results: dict[str, dict]):
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.4, 3.2), layout="constrained")
        for i, (task, result) in enumerate(results.items()):
            by_step = result["right_by_step"]
            steps = [int(s) for s in by_step if by_step[s]["n"] >= 5]
            values = [by_step[str(s)]["value"] for s in steps]
            # Wilson bounds at 0 or 1 can sit a rounding error past the value: clamp the bars at 0
            low = [max(0.0, v - by_step[str(s)]["ci_low"]) for s, v in zip(steps, values, strict=True)]
            high = [max(0.0, by_step[str(s)]["ci_high"] - v) for s, v in zip(steps, values, strict=True)]
            ax.errorbar(steps, values, yerr=[low, high], marker="o", markersize=3, capsize=2,
                        color=OKABE_ITO[i % len(OKABE_ITO)], label=task)  # fmt: skip
        ax.axvline(PAPER_STEP, color="#999999", linestyle=":", linewidth=1, label="paper: accurate by step 2")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("denoising step")
        ax.set_ylabel("rows whose predicted length is right")
        ax.set_title("Response length read from the end-token probability (95% CI)", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    return fig


def run(model=None, *, n: int = 100, out_dir: str | Path = "out/response_length", seed: int = 0, quick: bool = False,
        tasks=None, **gen_kwargs: Any) -> dict:  # fmt: skip
    """Length prediction per step on ``model`` (default: the ``smear`` organism); metrics and a figure."""
    import diffinterp as di

    hm = model if model is not None else di.load_model(ORGANISM)
    n = min(n, QUICK_N) if quick else n
    results: dict[str, dict] = {}
    with studies.StudyOutput(out_dir) as out:
        for task in tasks or studies.model_tasks(hm) or (studies.RANDOM_TASK,):
            prompts = studies.prompt_set(hm, task, n, seed=seed)
            result, batches = _measure(hm, prompts, seed=seed, gen_kwargs=gen_kwargs)
            alternative, _ = _measure(hm, prompts, seed=seed, gen_kwargs=alternative_kwargs(gen_kwargs))
            result["gate"] = measure_gate(
                hm,
                batches,
                seed=seed,
                finding=result["right_by_paper_step"],
                alternative_finding=alternative["right_by_paper_step"],
                finding_name=f"share of rows whose predicted length is right at step {result['paper_step']}",
                **gen_kwargs,
            )
            results[prompts.task] = result
        out.figure(_figure(results), "length_by_step")
        summary = {}
        for task, result in results.items():
            summary[f"{task}_right_by_step_{result['paper_step']}"] = result["right_by_paper_step"]["value"]
            summary[f"{task}_right_from_step0"] = result["right_from_step0"]["value"]
            summary[f"{task}_settle_step"] = result["settle_step"]["value"]
            summary[f"{task}_gate"] = result["gate"]["verdict"]
        summary["paper_claim"] = "the padding token's probability predicts the length accurately by step 2"
        out.metrics.update(
            summary=summary,
            per_task=results,
            gate={task: result["gate"] for task, result in results.items()},
            n=n,
            model=studies.model_info(hm),
            options={"seed": seed, "quick": quick, **studies.generation_options(gen_kwargs)},
        )
    return out.metrics
