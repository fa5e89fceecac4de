"""Measuring the dynamics gate (:mod:`diffinterp.phenomena.gate`) on the prompts a study ran.

    batches = list(run_prompt_set(hm, prompts, seed=seed, **gen_kwargs))
    gate = measure_gate(hm, batches, seed=seed, finding=value, alternative_finding=value_alt, **gen_kwargs)
    out.metrics["gate"] = gate                       # and the report shows gate["verdict"]

The full run is the study's own (its batches); the one-pass run replays the same prompts with the
same seeds and ``max_denoising_steps=1``; the step-0 comparison reads the full run's own records at
the phenomenon's positions (the task's ground-truth ``focus``, else the reference answer's tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffinterp.organisms.catalog import TASKS
from diffinterp.organisms.task import Example
from diffinterp.organisms.tokenizer import token_ids
from diffinterp.phenomena.gate import ALTERNATIVE_SAMPLER, evaluate_gate, focus_mask, step0_agreement
from diffinterp.stats import proportion
from diffinterp.studies.runs import StudyBatch, run_prompt_set


def focus_positions(batch: StudyBatch) -> list[list[int]] | None:
    """Per row, the canvas positions where the batch's task has its phenomenon: the ground truth's
    ``focus`` when the task defines one, else the reference answer's tokens; ``None`` without answers."""
    prompts = batch.prompts
    if prompts.answers is None or prompts.texts is None:
        return None
    task = TASKS.get(prompts.task)
    out = []
    for text, answer in zip(prompts.texts, prompts.answers, strict=True):
        example = Example(prompts.task, text, answer)
        truth = task.truth(example) if task is not None and task.truth is not None else {}
        out.append(list(truth.get("focus", range(len(token_ids(answer))))))
    return out


def step0_share(batches: Sequence[StudyBatch]) -> dict:
    """The share of final tokens (block 0) equal to the step-0 argmax at the focus positions of every
    row (every position up to the canvas end where the focus is unknown)."""
    same = total = 0
    for batch in batches:
        record = batch.trajectory.block(0)
        step0, final = record.steps[0].argmax.cpu(), record.final_canvas.cpu()
        positions = focus_positions(batch)
        focus = focus_mask(positions, final.shape[1]) if positions is not None else None
        counts = step0_agreement(step0, final, focus)
        same, total = same + counts["k"], total + counts["n"]
    return proportion(same, total)


def accuracy(batches: Sequence[StudyBatch]) -> dict | None:
    """Exact match over the batches' rows (``None`` without reference answers)."""
    flags = [flag for batch in batches if batch.correct is not None for flag in batch.correct.tolist()]
    if not flags:
        return None
    return proportion(sum(flags), len(flags))


def one_pass_accuracy(hm, batches: Sequence[StudyBatch], *, seed: int = 0, **gen_kwargs: Any) -> dict | None:
    """Exact match of the same prompts (same seeds) when the sampler stops after its first step."""
    if not batches or batches[0].correct is None:
        return None
    flags = []
    # each batch replays as one chunk, whatever chunk size (batch_size) the study ran with
    gen = {**{k: v for k, v in gen_kwargs.items() if k != "batch_size"}, "max_denoising_steps": 1}
    for batch in batches:
        replay = next(iter(run_prompt_set(hm, batch.prompts, batch_size=len(batch.rows), seed=batch.seed, **gen)))
        flags += replay.correct.tolist()
    return proportion(sum(flags), len(flags))


def measure_gate(
    hm,
    batches: Sequence[StudyBatch],
    *,
    seed: int = 0,
    finding: dict | None = None,
    alternative_finding: dict | None = None,
    alternative_setting: dict | None = None,
    finding_name: str = "finding",
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """The gate of a finding measured on ``batches`` (the study's full runs; ``gen_kwargs`` are the
    generation arguments they ran with). ``finding`` / ``alternative_finding``: the finding's value
    (a proportion or mean dict) under the run's settings and under ``alternative_setting``
    (default :data:`~diffinterp.phenomena.gate.ALTERNATIVE_SAMPLER`), measured by the study."""
    return evaluate_gate(
        accuracy(batches),
        one_pass_accuracy(hm, batches, seed=seed, **gen_kwargs),
        step0_share(batches),
        finding,
        alternative_finding,
        alternative_setting=alternative_setting or ALTERNATIVE_SAMPLER,
        finding_name=finding_name,
    )


def alternative_kwargs(gen_kwargs: dict[str, Any], setting: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generation arguments of the alternative run: the study's, with the sampler setting changed."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    setting = dict(setting or ALTERNATIVE_SAMPLER)
    out = {**gen_kwargs, **{k: v for k, v in setting.items() if k != "entropy_bound"}}
    if "entropy_bound" in setting:
        out["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(setting["entropy_bound"]))
    return out
