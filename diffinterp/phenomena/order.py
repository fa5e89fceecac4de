"""Order agreement: does what settles when follow a known dependency order, or left to right?

An organism's ground truth gives each canvas position a **round**: the length of the chain of
computations it depends on (a carry chain, a propagation round). A model that computes through its
denoising loop should settle low rounds before high ones. Settle steps come from
:mod:`diffinterp.phenomena.settling` (prediction order: the argmax alone; commit order: argmax and
acceptance).

For one row, over every pair of scored positions ``(i, j)`` with ``order[i] < order[j]``:
**concordant** if position i settles strictly before j, **discordant** if strictly after, **tied**
if at the same step. The row's **agreement** is ``concordant / (concordant + discordant)`` (tied pairs
excluded; ``None`` when every pair ties), and its **tie share** ``tied / pairs``. With ``order`` the
ground-truth rounds this measures agreement with the dependency order; with ``order`` the position
index it measures left-to-right (chronological) order. Pairs whose two positions share a round are
not scored. Shapes: ``[B, P]`` throughout; ``order < 0`` marks a position as not scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffinterp.stats import mean_ci, proportion


@dataclass
class PairCounts:
    """Per-row pair counts: ``concordant``, ``discordant``, ``tied`` (``LongTensor [B]`` each)."""

    concordant: torch.Tensor
    discordant: torch.Tensor
    tied: torch.Tensor

    @property
    def pairs(self) -> torch.Tensor:
        return self.concordant + self.discordant + self.tied

    def agreement(self) -> list[float | None]:
        """Per row: concordant / (concordant + discordant), ``None`` where no pair is strictly ordered."""
        decided = self.concordant + self.discordant
        return [float(c) / float(d) if d > 0 else None for c, d in zip(self.concordant, decided, strict=True)]


def pair_counts(settle: torch.Tensor, order: torch.Tensor) -> PairCounts:
    """Concordant / discordant / tied pairs per row (definitions in the module docstring)."""
    if settle.shape != order.shape or settle.dim() != 2:
        raise ValueError(
            f"settle and order must both be [batch, canvas]; got {list(settle.shape)}, {list(order.shape)}"
        )
    scored = order >= 0
    earlier = (order[:, :, None] < order[:, None, :]) & scored[:, :, None] & scored[:, None, :]  # [B, i, j]
    before = settle[:, :, None] < settle[:, None, :]
    after = settle[:, :, None] > settle[:, None, :]
    same = settle[:, :, None] == settle[:, None, :]
    return PairCounts((earlier & before).sum((1, 2)), (earlier & after).sum((1, 2)), (earlier & same).sum((1, 2)))


def left_to_right(order: torch.Tensor) -> torch.Tensor:
    """The chronological order of the same scored positions: their index (``-1`` kept)."""
    index = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.where(order >= 0, index, torch.full_like(order, -1))


def agreement_summary(counts: PairCounts, rows: torch.Tensor | None = None, *, seed: int = 0) -> dict:
    """Mean per-row agreement (bootstrap 95% CI over rows), the pooled share of strictly ordered
    pairs that agree and the pooled tie share (Wilson), over ``rows`` (a bool mask, default all)."""
    rows = torch.ones_like(counts.concordant, dtype=torch.bool) if rows is None else rows.bool()
    per_row = [a for a, keep in zip(counts.agreement(), rows.tolist(), strict=True) if keep and a is not None]
    concordant, discordant = int(counts.concordant[rows].sum()), int(counts.discordant[rows].sum())
    tied, pairs = int(counts.tied[rows].sum()), int(counts.pairs[rows].sum())
    return {
        "mean_agreement": mean_ci(per_row, seed=seed),
        "pooled_agreement": proportion(concordant, concordant + discordant),
        "tie_share": proportion(tied, pairs),
        "rows": int(rows.sum()),
        "pairs": pairs,
    }
