"""A cache that streams to disk as the run produces it: bounded memory, whatever the run's length.

``run_with_cache(..., store=DIR)`` records into a :class:`StreamedCache`. Activations are held in
memory only until ``shard_bytes`` of them have accumulated; then they are written as one shard
(``shard-00000.safetensors``: a record file, checksummed and written atomically like every record)
and replaced in the cache by tensors mapped from that file, which the OS pages in when read and
may drop again (file-backed, not process memory). So the cache indexes exactly like an in-memory
``DenoisingCache`` (``get``, ``stack``, ``items``, ``filter``, ``save``) while the memory it pins
stays below ``shard_bytes`` plus one activation. When the run ends, ``index.json`` lists every
entry's shard; :meth:`DenoisingCache.load` opens such a folder (checking each shard) the same way
(:func:`diffinterp.records.cache.load_store`).

Layout of ``DIR``::

    index.json                # {"format", "version", "positions", "shards": [...],
                              #  "entries": [[name, step, block, shard, tensor], ...]}
    shard-00000.safetensors   # record files of kind "diffinterp.DenoisingCache.shard"
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffinterp.records.cache import INDEX, SHARD_KIND, STORE_FORMAT, STORE_VERSION, DenoisingCache, Key
from diffinterp.records.files import write_json_atomic
from diffinterp.records.serialization import load_records, save_records

DEFAULT_SHARD_BYTES = 256 * 2**20


class StreamedCache(DenoisingCache):
    """A :class:`DenoisingCache` writing its entries to ``folder`` in shards of ``shard_bytes``.

    ``pending_bytes``: bytes held in memory, not yet written (at most ``shard_bytes`` plus the
    last activation added); ``peak_pending_bytes``: the most it ever held. Call :meth:`finish`
    once the run is over (``run_with_cache`` does) to write the last shard and the index.
    """

    def __init__(self, folder: str | Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES, dtype=None, positions=None):
        if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
            raise ValueError(f"shard_bytes must be a positive int (bytes per shard file), got {shard_bytes!r}")
        super().__init__(device="cpu", dtype=dtype, positions=positions)
        self.folder = Path(folder)
        self.shard_bytes = shard_bytes
        self.shards: list[str] = []
        self._locations: dict[Key, tuple[int, str]] = {}
        self._pending: dict[Key, None] = {}  # insertion-ordered; membership is checked on every hook call
        self.pending_bytes = 0
        self.peak_pending_bytes = 0
        self.finished = False

    def add(self, name: str, step: int | None, block: int, tensor: torch.Tensor) -> None:
        if self.finished:
            raise RuntimeError(
                f"this streamed cache was finished (its index is written in {self.folder}); it is read-only"
            )
        key = (name, step, block)
        if key in self._store and key not in self._pending:
            raise ValueError(f"{key} is already written to {self.folder}: a streamed cache stores each entry once")
        if key in self._pending:  # replaced before it was written: count it once
            old = self._store[key]
            self.pending_bytes -= old.numel() * old.element_size()
        super().add(name, step, block, tensor)
        self._pending[key] = None
        stored = self._store[key]
        self.pending_bytes += stored.numel() * stored.element_size()
        self.peak_pending_bytes = max(self.peak_pending_bytes, self.pending_bytes)
        if self.pending_bytes >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        index = len(self.shards)
        file = f"shard-{index:05d}.safetensors"
        tensors = {f"t{i}": self._store[key] for i, key in enumerate(self._pending)}
        entries = [list(key) for key in self._pending]
        save_records(self.folder / file, SHARD_KIND, tensors, {"entries": entries})
        mapped, _ = load_records(self.folder / file, SHARD_KIND)  # file-backed: the memory is released
        for i, key in enumerate(self._pending):
            self._store[key] = mapped[f"t{i}"]
            self._locations[key] = (index, f"t{i}")
        self.shards.append(file)
        self._pending, self.pending_bytes = {}, 0

    def finish(self) -> StreamedCache:
        """Write the last shard and ``index.json``; the cache stays readable (and read-only)."""
        if not self.finished:
            self._flush()
            index = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "positions": list(self.positions) if self.positions is not None else None,
                "shards": self.shards,
                "entries": [[*key, *self._locations[key]] for key in self._store],
            }
            write_json_atomic(self.folder / INDEX, index)
            self.finished = True
        return self

    def relocate(self, folder: str | Path) -> None:
        """The folder was renamed (an atomic write moved it into place): record its new path."""
        self.folder = Path(folder)
