"""Settling: the step at which each canvas position commits to its final token, and whether an answer
commits before the reasoning it depends on (non-chronological reasoning).

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

Regions of the final canvas (:func:`find_regions`), on the row's content (positions before the
first EOS, pads dropped):

- toy ``arith`` outputs (``b = 7 c = 1 4 = 1 4``): **answer** = the tokens after the last ``=``;
  **dependency** = the last scratch value, the tokens between the last two ``=`` (``1 4``);
  **scratch** = every content token before the last ``=``.
- generic fallback (any vocabulary, or output the arith parse rejects): answer = the last content
  token; dependency = scratch = every earlier content token.

A region settles when its last token settles (``reduce="max"``); :func:`settle_order` compares
the answer's step with the reasoning's: -1 strictly before, 0 same step (tie), +1 after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffinterp.stats import proportion  # noqa: E402

BEFORE, TIE, AFTER = -1, 0, 1
ORDER_NAMES = {BEFORE: "before", TIE: "tie", AFTER: "after"}
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000"]


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
@dataclass
class Regions:
    """Where the answer and its reasoning sit in the final canvas: ``BoolTensor [B, P]`` masks;
    ``arith`` ``[B]``: True where the arith parse applied (False = the generic fallback)."""

    answer: torch.Tensor
    dependency: torch.Tensor
    scratch: torch.Tensor
    arith: torch.Tensor

    def positions(self, name: str, row: int) -> list[int]:
        return getattr(self, name)[row].nonzero().flatten().tolist()


def content_positions(tokens: Sequence[int], eos_id: int, pad_id: int) -> list[int]:
    """Positions of one row's content: before the first ``eos_id``, pads dropped."""
    out = []
    for pos, token in enumerate(tokens):
        if token == eos_id:
            break
        if token != pad_id:
            out.append(pos)
    return out


def arith_spans(tokens: Sequence[int], content: Sequence[int], eq_id: int):
    """``(answer, dependency, scratch)`` positions of an arith output, or None if it is not
    ``... = v = a``: at least two ``=`` and non-empty tokens between and after the last two."""
    equals = [pos for pos in content if tokens[pos] == eq_id]
    if len(equals) < 2:
        return None
    answer = [pos for pos in content if pos > equals[-1]]
    dependency = [pos for pos in content if equals[-2] < pos < equals[-1]]
    if not answer or not dependency:
        return None
    return answer, dependency, [pos for pos in content if pos < equals[-1]]


def generic_spans(content: Sequence[int]):
    """``(answer, dependency, scratch)``: the last content position, and every earlier one (twice)."""
    content = list(content)
    if not content:
        return [], [], []
    return content[-1:], content[:-1], content[:-1]


def find_regions(tokens: torch.Tensor, eos_id: int, pad_id: int, eq_id: int | None = None) -> Regions:
    """:class:`Regions` of final canvases ``[B, P]``; ``eq_id`` (the ``=`` token) enables the arith parse."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {list(tokens.shape)}")
    masks = torch.zeros(3, *tokens.shape, dtype=torch.bool)
    arith = torch.zeros(tokens.shape[0], dtype=torch.bool)
    for row, values in enumerate(tokens.tolist()):
        content = content_positions(values, eos_id, pad_id)
        spans = arith_spans(values, content, eq_id) if eq_id is not None else None
        arith[row] = spans is not None
        for index, positions in enumerate(spans or generic_spans(content)):
            masks[index, row, positions] = True
    return Regions(masks[0], masks[1], masks[2], arith)


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


def settle_order(answer_step: torch.Tensor, reasoning_step: torch.Tensor) -> torch.Tensor:
    """-1 / 0 / +1 ``[B]``: the answer settles strictly before / at the same step as / after the reasoning."""
    return torch.sign(answer_step - reasoning_step).long()


def order_fractions(order: torch.Tensor, valid: torch.Tensor) -> dict:
    """Fractions (Wilson 95% CIs) of before / tie / after among the ``valid`` rows."""
    picked = order[valid.bool()]
    n = int(picked.numel())
    return {name: proportion(int((picked == code).sum()), n) for code, name in ORDER_NAMES.items()}


# ------------------------------------------------------------------------------- logit lens
def answer_lens_steps(
    lens_argmax: torch.Tensor, final: torch.Tensor, answer: torch.Tensor, last: torch.Tensor
) -> torch.Tensor:
    """First step ``[L, B]`` at which layer ``l``'s lens argmax equals the final token at every
    answer position (-1: never by the row's last step). ``lens_argmax`` ``[S, L, B, P]``."""
    hits = (lens_argmax == final[None, None]) | ~answer.bool()[None, None]  # [S, L, B, P]
    hits = hits.all(-1) & answer.bool().any(-1)[None, None]  # [S, L, B]
    steps = torch.arange(hits.shape[0])[:, None, None]
    hits &= steps <= last[None, None, :]
    first = hits.float().argmax(0)
    return torch.where(hits.any(0), first, torch.full_like(first, -1))


def region_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[..., B, P]`` over ``mask`` ``[B, P]`` positions: ``[..., B]`` (NaN if empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1)


def align_to(values: torch.Tensor, anchor: torch.Tensor, last: torch.Tensor, offsets: Sequence[int]):
    """Mean of ``values`` ``[S, B]`` at step ``anchor[b] + o`` for each offset ``o`` (rows where that
    step is in ``[0, last[b]]`` and ``anchor >= 0``): ``(means [O], counts [O])`` (NaN where none)."""
    means, counts = [], []
    for offset in offsets:
        step = anchor + offset
        ok = (anchor >= 0) & (step >= 0) & (step <= last) & (step < values.shape[0])
        picked = values[step[ok], torch.arange(values.shape[1])[ok]]
        counts.append(int(ok.sum()))
        means.append(float(picked.mean()) if picked.numel() else float("nan"))
    return np.array(means), np.array(counts)


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
    "Regions",
    "Settling",
    "align_to",
    "answer_lens_steps",
    "arith_spans",
    "content_positions",
    "corrupt_tokens",
    "final_tokens",
    "find_regions",
    "generic_spans",
    "last_steps",
    "order_fractions",
    "outcome",
    "region_mean",
    "region_step",
    "replace_positions_hook",
    "settle_order",
    "settle_steps",
    "trajectory_settling",
]
