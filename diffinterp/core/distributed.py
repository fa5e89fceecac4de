"""Prompt sets split over processes: ``torchrun --nproc-per-node N -m diffinterp.cli case-study|eval ...``.

Every batch of a prompt set is seeded by its first row (``seed + row``), so its result does not
depend on which process runs it. Under torchrun each process runs every N-th batch
(:func:`map_in_order`; used by ``run_prompt_set`` and ``evaluate_task``), the results are
exchanged (``all_gather_object``), and every process continues with all of them in order: the
metrics are those of one process, and only rank 0 writes them (the commands check the rank
:func:`process_group` yields).

The process group is the one torchrun describes in the environment (``WORLD_SIZE``, ``RANK``,
``MASTER_ADDR`` …); gloo on CPU, NCCL on GPUs. Nothing here runs without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the process group this process is in; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """Join the process group torchrun set up in the environment (``WORLD_SIZE`` > 1) for the
    body, and leave it after; without torchrun, nothing. Yields (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        yield world()
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed: run one process")
    if torch.cuda.is_available():  # one GPU per process: the exchanged objects go through this rank's
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def map_in_order(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[fn(item) for item in items]``, with the items split over the process group's ranks
    (rank r computes items r, r + N, ...) and every result returned, in order, on every rank."""
    rank, size = world()
    if size == 1:
        return [fn(item) for item in items]
    mine, error = [], None
    for index, item in enumerate(items):
        if index % size == rank and error is None:
            try:
                mine.append((index, fn(item)))
            except Exception as err:  # noqa: BLE001 - sent to every rank, so none waits for the rest forever
                error = f"rank {rank}, item {index}: {type(err).__name__}: {err}"
    parts: list = [None] * size
    dist.all_gather_object(parts, (error, mine))
    errors = [e for e, _ in parts if e is not None]
    if errors:
        raise RuntimeError("a process of the torchrun group failed: " + "; ".join(errors))
    return [value for _, value in sorted((pair for _, part in parts for pair in part), key=lambda p: p[0])]
