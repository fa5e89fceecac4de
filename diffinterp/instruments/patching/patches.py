"""Patches: which activation (hook, block, step, positions) to copy from a source run into a target run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

RESID_POST = "decoder.blocks.{layer}.hook_resid_post"


@dataclass(frozen=True, eq=False)
class Patch:
    """Replace hook ``name`` at (``block``, ``step``) by the source run's activation.

    ``positions``: None (all positions), a list of canvas positions, or a bool tensor
    ``[batch, pos]`` choosing positions per prompt (pattern hooks: query positions).
    """

    name: str
    step: int
    block: int = 0
    positions: Sequence[int] | torch.Tensor | None = None

    def __post_init__(self):
        if not self.name.startswith("decoder."):
            raise ValueError(
                f"patches replace decoder activations (one per denoising step); '{self.name}' is not a decoder hook"
            )
        for what, value in (("step", self.step), ("block", self.block)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Patch {what} must be an integer >= 0, got {value!r}")

    def mask(self, batch: int, n_pos: int, device=None) -> torch.Tensor:
        """The positions as a bool mask ``[batch, n_pos]``."""
        return position_mask(self.positions, batch, n_pos, device, what=f"patch of '{self.name}'")


def position_mask(positions, batch: int, n_pos: int, device=None, what: str = "positions") -> torch.Tensor:
    """``positions`` (None = all, list of ints, or bool ``[batch, n_pos]``) as a bool mask ``[batch, n_pos]``."""
    if positions is None:
        return torch.ones(batch, n_pos, dtype=torch.bool, device=device)
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch, n_pos):
            raise ValueError(
                f"{what}: a position mask must have shape [batch, pos] = [{batch}, {n_pos}], got {list(positions.shape)}"
            )
        return positions.to(device)
    values = [int(p) for p in (positions.tolist() if isinstance(positions, torch.Tensor) else positions)]
    bad = [p for p in values if not 0 <= p < n_pos]
    if bad:
        raise IndexError(f"{what}: position {bad[0]} out of range (valid 0..{n_pos - 1})")
    mask = torch.zeros(batch, n_pos, dtype=torch.bool, device=device)
    mask[:, values] = True
    return mask


def as_runs(runs) -> list[list[Patch]]:
    result = []
    for run in runs:
        patches = [run] if isinstance(run, Patch) else list(run)
        for patch in patches:
            if not isinstance(patch, Patch):
                raise TypeError(f"a patched run is a Patch or a list of Patches, got {type(patch).__name__}")
        result.append(patches)
    return result
