"""Patching metrics: ``fn(logits [..., batch, canvas, V] float32, canvas [..., batch, canvas]) -> [..., batch]``,
and the final outputs of a trajectory they are scored against."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from diffinterp.core.replay import replayed_steps
from diffinterp.instruments.patching.patches import position_mask
from diffinterp.records.trajectory import Trajectory


def _gather_mask(positions, reference: torch.Tensor) -> torch.Tensor:
    batch, canvas = reference.shape
    return position_mask(positions, batch, canvas, reference.device, what="metric positions")


@dataclass(eq=False)
class LogitDiff:
    """Mean over ``positions`` of ``logit[clean token] - logit[corrupt token]`` (raw, soft-capped logits).

    ``clean_tokens`` / ``corrupt_tokens``: ``[batch, canvas]`` (e.g. the two runs' final canvases).
    ``positions`` None = the positions where the two differ (per prompt); rows where none differ
    score 0. Differentiable.
    """

    clean_tokens: torch.Tensor
    corrupt_tokens: torch.Tensor
    positions: Any = None
    name: str = "logit difference"
    differentiable: bool = True

    def __call__(self, logits: torch.Tensor, canvas: torch.Tensor | None = None) -> torch.Tensor:
        clean = self.clean_tokens.to(logits.device)
        corrupt = self.corrupt_tokens.to(logits.device)
        mask = (clean != corrupt) if self.positions is None else _gather_mask(self.positions, clean)
        shape = logits.shape[:-1]
        good = logits.gather(-1, clean.expand(shape).unsqueeze(-1)).squeeze(-1)
        bad = logits.gather(-1, corrupt.expand(shape).unsqueeze(-1)).squeeze(-1)
        weight = mask.to(logits.dtype)
        return ((good - bad) * weight).sum(-1) / weight.sum(-1).clamp(min=1)


@dataclass(eq=False)
class AnswerProb:
    """Mean over ``positions`` of the probability (softmax of the raw logits) of ``tokens`` ``[batch, canvas]``.

    ``positions`` None = every position. Differentiable.
    """

    tokens: torch.Tensor
    positions: Any = None
    name: str = "answer probability"
    differentiable: bool = True

    def __call__(self, logits: torch.Tensor, canvas: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.tokens.to(logits.device)
        mask = _gather_mask(self.positions, tokens)
        probs = logits.softmax(-1).gather(-1, tokens.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        weight = mask.to(probs.dtype)
        return (probs * weight).sum(-1) / weight.sum(-1).clamp(min=1)


@dataclass(eq=False)
class ExactMatch:
    """1.0 where the output canvas equals ``tokens`` ``[batch, canvas]`` at ``positions`` (None = all), else 0.0.

    With ``eos_id`` / ``pad_id`` both canvases are compared as the sampler returns them: every token
    after the first EOS counts as padding.
    """

    tokens: torch.Tensor
    positions: Any = None
    eos_id: int | None = None
    pad_id: int | None = None
    name: str = "exact match"
    differentiable: bool = False

    def __call__(self, logits: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens.to(canvas.device)
        mask = _gather_mask(self.positions, tokens)
        got, want = canvas, tokens.expand(canvas.shape)
        if self.eos_id is not None and self.pad_id is not None:
            got, want = pad_after_eos(got, self.eos_id, self.pad_id), pad_after_eos(want, self.eos_id, self.pad_id)
        same = (got == want) | ~mask
        return same.all(-1).to(torch.float32)


def pad_after_eos(canvas: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Tokens after each row's first EOS replaced by ``pad_id`` (as ``generate`` finalises a canvas)."""
    is_eos = canvas == eos_id
    cumsum = is_eos.long().cumsum(-1)
    after = (cumsum > 0) & ~((cumsum == 1) & is_eos)
    return canvas.masked_fill(after, pad_id)


def final_outputs(hm, trajectory: Trajectory, block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's last denoising step of ``block``: (raw logits ``[batch, canvas, V]``, argmax canvas ``[batch, canvas]``).

    Rows stop at different steps (adaptive stopping); this takes the logits of the step at which
    each row was last active: the recorded ones, or re-run (one decoder pass per step whose logits
    were not recorded, user hooks quiet: a replay of the recorded run).
    """
    logits, argmax, _ = final_outputs_and_signals(hm, trajectory, block, ())
    return logits, argmax


def final_outputs_and_signals(
    hm, trajectory: Trajectory, block: int, signal_steps: Collection[int]
) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor | None]]:
    """:func:`final_outputs` and the self-conditioning signal entering each of ``signal_steps``, from
    one replay of the block (at most one decoder pass per step; none where float32 logits were recorded)."""
    record = trajectory.block(block)
    wanted, signals = set(signal_steps), {}
    logits = None
    with hm.context.claim(), hm.context.quiet():
        if not wanted and all(step.logits is not None for step in record.steps):
            replay = ((step, None, step.logits) for step in record.steps)  # nothing to re-run
        else:
            replay = ((r.step, r.signal, r.logits) for r in replayed_steps(hm, trajectory, block))
        for step, signal, rerun in replay:
            if step.step in wanted:
                signals[step.step] = signal
            step_logits = (step.logits if step.logits is not None else rerun).float()
            logits = (
                step_logits.clone() if logits is None else torch.where(step.active[:, None, None], step_logits, logits)
            )
    return logits, record.steps[-1].argmax, signals


def step_outputs(hm, trajectory: Trajectory, block: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's (raw logits, argmax canvas), recorded or re-run."""
    record = trajectory.step(block, step)
    logits = record.logits if record.logits is not None else hm.run_step(trajectory, block, step)
    return logits.float(), record.argmax
