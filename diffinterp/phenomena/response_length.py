"""Early response-length prediction: when does a denoising model know how long its answer will be?

At each step, each canvas position has a probability of being past the answer's end: the mass of
the end tokens (``<eos>`` and the padding that follows it; :func:`end_probability`). The
**predicted length** at that step is the first position whose end probability exceeds one half
(:func:`predicted_lengths`; the canvas length when none does). The step at which the prediction is
**right** is the first from which it equals the final output's length (its first ``<eos>``) at
every later step of the row (:func:`length_settle_steps`). The paper reports the padding token's
probability predicting the length accurately by step 2 (26B model, chat prompts).

Shapes: ``S`` steps, ``B`` rows, ``P`` canvas positions, ``V`` vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffinterp.stats import mean_ci, proportion

THRESHOLD = 0.5


def end_probability(logits: torch.Tensor, end_ids: Sequence[int]) -> torch.Tensor:
    """``[B, P]``: the probability (softmax of ``logits`` ``[B, P, V]``) of the ``end_ids`` at each position."""
    probs = logits.float().softmax(-1)
    return probs[..., list(end_ids)].sum(-1).cpu()


def predicted_lengths(end_prob: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """``[..., B]`` predicted lengths from end probabilities ``[..., B, P]``: the first position whose
    end probability exceeds ``threshold`` (``P`` where none does)."""
    past = end_prob > threshold
    first = past.float().argmax(-1)
    return torch.where(past.any(-1), first, torch.full_like(first, end_prob.shape[-1]))


def output_lengths(final: torch.Tensor, eos_id: int) -> torch.Tensor:
    """``[B]`` lengths of final canvases ``[B, P]``: the position of the first ``eos_id`` (``P`` if none)."""
    is_eos = final == eos_id
    first = is_eos.float().argmax(-1)
    return torch.where(is_eos.any(-1), first, torch.full_like(first, final.shape[-1]))


def length_settle_steps(predicted: torch.Tensor, truth: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``[B]``: the first step from which ``predicted`` ``[S, B]`` equals ``truth`` ``[B]`` at every
    step the row ran (``active`` ``[S, B]``); ``-1`` when it is wrong at the row's last step."""
    steps = torch.arange(predicted.shape[0])[:, None]
    last = torch.where(active.bool(), steps, torch.zeros_like(steps)).max(0).values
    ok = (predicted == truth[None]) | (steps > last[None])
    holds = ok.flip(0).cumprod(0).flip(0).bool()
    first = holds.float().argmax(0).long()
    return torch.where(holds[last, torch.arange(len(last))], first, torch.full_like(first, -1))


def length_summary(predicted: torch.Tensor, truth: torch.Tensor, active: torch.Tensor, *, seed: int = 0) -> dict:
    """Share of rows (still active) whose predicted length is right at each step, and the step from
    which it stays right (mean with a 95% CI over the rows where it ends right)."""
    settle = length_settle_steps(predicted, truth, active)
    right = {}
    for step in range(predicted.shape[0]):
        live = active[step].bool()
        right[str(step)] = proportion(int(((predicted[step] == truth) & live).sum()), int(live.sum()))
    return {
        "right_by_step": right,
        "settle_step": mean_ci(settle[settle >= 0].float().tolist(), seed=seed),
        "right_at_end": proportion(int((settle >= 0).sum()), len(settle)),
        "right_from_step0": proportion(int((settle == 0).sum()), len(settle)),
    }
