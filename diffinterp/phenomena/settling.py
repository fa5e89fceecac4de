"""Settling: the step at which each canvas position commits to its final token (non-chronological reasoning).

Shapes: ``S`` steps, ``B`` rows (prompts), ``P`` canvas positions, ``L`` layers.

Definitions (what the sampler does, see ``diffinterp.core.sampler``):

- **last step** of a row: its last *active* step (``StepRecord.active``). A row that stopped early
  keeps running through the batch's forward passes with a frozen canvas; those records are ignored.
- **final token**: the argmax at the row's last step. The sampler appends the *argmax* canvas of
  the last step to the sequence, whether or not a position was accepted there.
- **settle step** of a position: the first step ``s`` such that at every step ``s' in [s, last]`` the
  argmax equals the final token and the position is accepted, where the last step counts as
  accepted (the whole argmax canvas is committed then). A position not accepted at its row's last
  step therefore settles at ``last``; every position settles at some step in ``[0, last]``.

A region (a set of positions, e.g. a task's answer or its scratchpad) settles when its last token
settles (:func:`region_step`). :func:`corrupt_tokens`, :func:`replace_positions_hook` and
:func:`outcome` serve the causal tests: corrupt a token from a step on and see whether what depends
on it follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402


# ------------------------------------------------------------------------------- settle steps
def _check_steps(argmax: torch.Tensor, accepted: torch.Tensor, active: torch.Tensor | None) -> None:
    if argmax.dim() != 3:
        raise ValueError(f"argmax must be [steps, batch, pos], got shape {list(argmax.shape)}")
    if accepted.shape != argmax.shape:
        raise ValueError(f"accepted {list(accepted.shape)} must match argmax {list(argmax.shape)}")
    if active is not None and active.shape != argmax.shape[:2]:
        raise ValueError(f"active must be [steps, batch] = {list(argmax.shape[:2])}, got {list(active.shape)}")


def last_steps(active: torch.Tensor) -> torch.Tensor:
    """Each row's last active step ``[B]`` from ``active`` ``[S, B]`` (a row is active at step 0)."""
    steps = torch.arange(active.shape[0], device=active.device)[:, None].expand_as(active)
    return torch.where(active.bool(), steps, torch.zeros_like(steps)).max(0).values


def final_tokens(argmax: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The argmax at each row's last step: ``argmax`` ``[S, B, P]``, ``last`` ``[B]`` -> ``[B, P]``."""
    rows = torch.arange(argmax.shape[1], device=argmax.device)
    return argmax[last.to(argmax.device), rows]


def settle_steps(argmax: torch.Tensor, accepted: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """The settle step ``[B, P]`` of every position (module docstring): ``argmax`` / ``accepted``
    ``[S, B, P]``, ``active`` ``[S, B]`` (None = every row ran all ``S`` steps)."""
    _check_steps(argmax, accepted, active)
    n_steps = argmax.shape[0]
    active = torch.ones(argmax.shape[:2], dtype=torch.bool) if active is None else active.bool().cpu()
    argmax, accepted = argmax.cpu(), accepted.bool().cpu()
    last = last_steps(active)  # [B]
    steps = torch.arange(n_steps)[:, None, None]
    final = final_tokens(argmax, last)
    ok = (argmax == final) & (accepted | (steps == last[None, :, None]))
    ok |= steps > last[None, :, None]  # ignore a finished row's later records
    holds = ok.flip(0).cumprod(0).flip(0).bool()  # True from s on iff ok at every later step
    return holds.float().argmax(0).long()  # holds at last by construction, so some step always holds


@dataclass
class Settling:
    """Settling of one block: ``settle`` / ``final`` ``[B, P]``, ``last`` ``[B]`` (each row's last step)."""

    settle: torch.Tensor
    final: torch.Tensor
    last: torch.Tensor


def trajectory_settling(trajectory, block: int = 0) -> Settling:
    """:func:`settle_steps`, the final tokens and the last steps of a ``Trajectory``'s ``block``."""
    argmax = trajectory.stack("argmax", block).cpu()
    accepted = trajectory.stack("accepted", block).cpu()
    active = trajectory.stack("active", block).cpu()
    last = last_steps(active)
    return Settling(settle_steps(argmax, accepted, active), final_tokens(argmax, last), last)


# ------------------------------------------------------------------------------- regions


def content_positions(tokens: Sequence[int], eos_id: int, pad_id: int) -> list[int]:
    """Positions of one row's content: before the first ``eos_id``, pads dropped."""
    out = []
    for pos, token in enumerate(tokens):
        if token == eos_id:
            break
        if token != pad_id:
            out.append(pos)
    return out


# ------------------------------------------------------------------------------- comparisons
def region_step(settle: torch.Tensor, mask: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """The step ``[B]`` a region settles: the max (its last token) or min (its first) of ``settle``
    ``[B, P]`` over ``mask`` ``[B, P]``; -1 where the region is empty."""
    if reduce not in ("max", "min"):
        raise ValueError(f"reduce must be 'max' or 'min', got {reduce!r}")
    mask = mask.bool().to(settle.device)
    if reduce == "max":
        value = torch.where(mask, settle, torch.full_like(settle, -1)).max(1).values
    else:
        big = torch.iinfo(settle.dtype).max
        value = torch.where(mask, settle, torch.full_like(settle, big)).min(1).values
    return torch.where(mask.any(1), value, torch.full_like(value, -1))


# ------------------------------------------------------------------------------- logit lens


# ------------------------------------------------------------------------------- causal test
def corrupt_tokens(tokens: torch.Tensor, cycle: Sequence[int], shift: int) -> torch.Tensor:
    """Each token moved ``shift`` places along ``cycle`` (e.g. the digit ids: ``d -> (d + shift) mod 10``);
    tokens outside ``cycle`` (e.g. a noise token) become ``cycle[shift % len]``."""
    cycle = list(cycle)
    if len(cycle) < 2 or shift % len(cycle) == 0:
        raise ValueError(f"need a cycle of >= 2 ids and a shift that is not a multiple of {len(cycle)}")
    index = {token: i for i, token in enumerate(cycle)}
    out = []
    for token in tokens.tolist():
        out.append(cycle[(index.get(token, 0) + shift) % len(cycle)])
    return torch.tensor(out, dtype=torch.long, device=tokens.device)


def replace_positions_hook(replacement: torch.Tensor, position: torch.Tensor, step: torch.Tensor, *, block: int = 0,
                           persist: bool = False, skip_zero: bool = False) -> Callable:  # fmt: skip
    """A hook ``fn(tensor [B, P, d], hook)`` that, at ``hook.step == step[b]`` of ``block`` (every
    ``hook.step >= step[b]`` with ``persist``), sets row ``b``'s ``position[b]`` to ``replacement[b]``
    ``[B, d]`` (rows with ``step < 0`` untouched). ``skip_zero`` leaves a row alone where the
    activation there is all zeros (no self-conditioning signal at a block's first step)."""
    step = step.cpu()

    def hook(tensor: torch.Tensor, hook):
        if hook.block != block or hook.step is None:
            return None
        fires = (step >= 0) & (step <= hook.step) if persist else step == hook.step
        rows = fires.nonzero().flatten().tolist()
        if not rows:
            return None
        out = tensor.clone()
        for row in rows:
            pos = int(position[row])
            if skip_zero and not bool(tensor[row, pos].any()):
                continue
            out[row, pos] = replacement[row].to(tensor.dtype)
        return out

    return hook


def outcome(new_answer: Sequence[int], clean_answer: Sequence[int], implied: Sequence[int] | None) -> str:
    """``unchanged`` (the clean answer), ``follows`` (the answer the corrupted reasoning implies) or ``other``."""
    new_answer, clean_answer = list(new_answer), list(clean_answer)
    if new_answer == clean_answer:
        return "unchanged"
    if implied is not None and new_answer == list(implied):
        return "follows"
    return "other"


__all__ = [
    "Settling",
    "content_positions",
    "corrupt_tokens",
    "final_tokens",
    "last_steps",
    "outcome",
    "region_step",
    "replace_positions_hook",
    "settle_steps",
    "trajectory_settling",
]
