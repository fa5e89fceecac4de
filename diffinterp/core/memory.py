"""How much memory a run may take: the guard that refuses a cache (or recorded logits) that would not fit.

``run_with_cache(..., max_bytes="auto")`` (the default) estimates the cache before the run
(:meth:`~diffinterp.core.hooked.HookedDiffusionGemma.estimate_cache_bytes`) and refuses, with the
estimate and the ways out, when it exceeds :data:`SAFETY` of the memory available on the device the
cache goes to; ``generate(record_logits=True)`` does the same for the logits. ``max_bytes=None``
turns the check off; an integer sets the budget.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

SAFETY = 0.8  # the share of the available memory a cache may take


def available_bytes(device: str | torch.device | None) -> int:
    """Memory free on ``device`` now: CUDA's free memory, else the host's available memory."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def budget(max_bytes: int | str | None, device: str | torch.device | None) -> int | None:
    """The byte budget ``max_bytes`` means: ``"auto"`` = :data:`SAFETY` x the available memory."""
    if max_bytes is None:
        return None
    if max_bytes == "auto":
        return int(SAFETY * available_bytes(device))
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int, 'auto' or None, got {max_bytes!r}")
    return max_bytes


def disk_budget(max_bytes: int | str | None, folder: str | Path) -> int | None:
    """The byte budget of a cache streamed to ``folder``: ``"auto"`` = :data:`SAFETY` x the free
    disk space where it goes (its nearest existing parent)."""
    if max_bytes != "auto":
        return budget(max_bytes, "cpu")
    place = Path(folder).resolve()
    while not place.exists():
        place = place.parent
    return int(SAFETY * shutil.disk_usage(place).free)


def logits_bytes(batch: int, canvas: int, vocab: int, steps: int, blocks: int, dtype: torch.dtype | None) -> int:
    """Bytes of recorded logits for a run: ``[batch, canvas, vocab]`` per step of every block."""
    element = torch.empty((), dtype=dtype or torch.float32).element_size()
    return batch * canvas * vocab * steps * blocks * element
