"""``DenoisingCache``: activations recorded over a run, indexed by (hook name, step, block).

    cache["decoder.blocks.2.hook_resid_post", 3]          # step 3 of block 0: [batch, pos, d_model]
    cache["decoder.blocks.2.hook_resid_post", 3, 1]       # step 3 of block 1
    cache["encoder.blocks.0.hook_resid_post"]             # encoder pass of block 0 (the prompt)
    cache.get("encoder.blocks.0.hook_resid_post", block=1)
    cache.stack("decoder.blocks.2.hook_resid_post")       # [steps, batch, pos, d_model]

Encoder entries have step ``None`` (the encoder runs once per block). When the run was filtered
to canvas ``positions``, the stored tensors hold only those positions, in that order.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from diffinterp.records.serialization import RecordError, load_records, require, require_keys, save_records

KIND = "diffinterp.DenoisingCache"
# A cache streamed to a folder (diffinterp.records.streamed writes it; load_store reads it).
INDEX = "index.json"
STORE_FORMAT = "diffinterp.DenoisingCache.store"
SHARD_KIND = "diffinterp.DenoisingCache.shard"
STORE_VERSION = 1
Key = tuple[str, int | None, int]


class CacheBudgetError(MemoryError):
    """Raised before storing would take a cache past its ``max_bytes``."""


class DenoisingCache:
    """Activations keyed by (name, step, block); stored on ``device`` as ``dtype`` (None = as computed)."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_bytes: int | None = None,
        positions: tuple[int, ...] | None = None,
    ):
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.max_bytes = max_bytes
        self.positions = positions
        self._store: dict[Key, torch.Tensor] = {}
        self._nbytes = 0

    # ------------------------------------------------------------------ writing
    def check_budget(self, nbytes: int, what: str = "this cache") -> None:
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise CacheBudgetError(
                f"{what} needs {human_bytes(nbytes)}, over max_bytes={human_bytes(self.max_bytes)} (by default 80% of the "
                "free memory where the cache goes): record fewer hooks (names_filter=), "
                "steps, blocks or positions (steps=, blocks=, positions=), store a smaller dtype (dtype=), "
                "cache on another device (device=), or set max_bytes (None: no check)"
            )

    def add(self, name: str, step: int | None, block: int, tensor: torch.Tensor) -> None:
        """Store one activation (a detached copy, moved and cast as configured).

        Called once per hook call of a caching run, so kept lean: the budget message is built
        only when it is needed, and a copy that neither moves nor casts is a plain ``clone``
        (``detach`` only where autograd tracks the tensor)."""
        if tensor.requires_grad:
            tensor = tensor.detach()
        dtype = self.dtype
        cast = dtype is not None and tensor.dtype != dtype and tensor.is_floating_point()
        nbytes = tensor.numel() * _element_size(dtype) if cast else tensor.nbytes
        if self.max_bytes is not None and self._nbytes + nbytes > self.max_bytes:
            self.check_budget(self._nbytes + nbytes, what=f"storing '{name}' at step {step}, block {block}")
        if cast or (self.device is not None and self.device != tensor.device):
            stored = tensor.to(device=self.device, dtype=dtype if cast else None, copy=True)
        else:
            stored = tensor.clone()
        key = (name, step, block)
        previous = self._store.get(key)
        if previous is not None:
            self._nbytes -= previous.nbytes
        self._store[key] = stored
        self._nbytes += nbytes

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: Any) -> bool:
        try:
            return self._normalise(key) in self._store
        except (KeyError, TypeError):
            return False

    def keys(self) -> list[Key]:
        return list(self._store)

    def items(self):
        return self._store.items()

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(name for name, _, _ in self._store))

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def steps(self, name: str, block: int = 0) -> list[int]:
        """Recorded steps of ``name`` in ``block``, in order."""
        self._check_name(name)
        return sorted(step for n, step, b in self._store if n == name and b == block and step is not None)

    def blocks(self, name: str) -> list[int]:
        self._check_name(name)
        return sorted({b for n, _, b in self._store if n == name})

    def _check_name(self, name: str) -> None:
        if name not in self.names:
            import difflib

            close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(f"'{name}' is not in this cache{hint} (it holds {len(self.names)} hook names)")

    def _normalise(self, key: Any) -> Key:
        if isinstance(key, str):
            name, step, block = key, None, 0
            if not name.startswith("encoder."):
                raise KeyError(
                    f"decoder hook '{name}' has one activation per step: index cache['{name}', step] "
                    f"(or cache['{name}', step, block]), or use cache.stack('{name}')"
                )
        elif isinstance(key, tuple) and len(key) in (2, 3):
            name, step = key[0], key[1]
            block = key[2] if len(key) == 3 else 0
        else:
            raise TypeError(f"index a cache with name, (name, step) or (name, step, block); got {key!r}")
        return name, step, block

    def get(self, name: str, step: int | None = None, block: int = 0) -> torch.Tensor:
        key = (name, step, block)
        if key in self._store:
            return self._store[key]
        self._check_name(name)
        blocks = self.blocks(name)
        if block not in blocks:
            raise KeyError(f"block {block} of '{name}' was not recorded; recorded blocks: {_ranges(blocks)}")
        steps = self.steps(name, block)
        if step is None:
            raise KeyError(
                f"'{name}' is a decoder hook: give a step (recorded steps of block {block}: {_ranges(steps)})"
            )
        if name.startswith("encoder."):
            raise KeyError(f"'{name}' is an encoder hook: it has no steps; use cache.get('{name}', block={block})")
        raise KeyError(
            f"step {step} of '{name}' in block {block} was not recorded; recorded steps: {_ranges(steps)}"
            f" (valid range 0..{max(steps) if steps else -1})"
        )

    def __getitem__(self, key: Any) -> torch.Tensor:
        return self.get(*self._normalise(key))

    def stack(self, name: str, block: int = 0) -> torch.Tensor:
        """Every recorded step of ``name`` in ``block``: ``[steps, *activation_shape]``."""
        steps = self.steps(name, block)
        if not steps:
            if name.startswith("encoder."):
                raise KeyError(f"'{name}' is an encoder hook with one activation per block; use cache.get")
            raise KeyError(f"no steps of '{name}' were recorded in block {block}")
        return torch.stack([self._store[(name, step, block)] for step in steps])

    def stack_activation(self, name: str, step: int | None = None, block: int = 0, layers=None) -> torch.Tensor:
        """One hook at every layer, stacked: ``[layers, *activation_shape]`` (TransformerLens's
        ``stack_activation``). ``name``: a template with ``{layer}``
        (``"decoder.blocks.{layer}.hook_resid_post"``) or a short name (``"hook_resid_post"``,
        ``"resid_post"``, ``"attn.hook_pattern"``), read as a decoder hook; ``step`` is required
        for decoder hooks; ``layers``: which (default: every layer the cache holds, in order)."""
        template = name if "{layer}" in name else _layer_template(name)
        stack = template.split(".", 1)[0]
        if step is None and stack == "decoder":
            raise KeyError(f"'{template}' is a decoder hook: give a step (cache.stack_activation(name, step))")
        if layers is None:
            found = [_layer_of(template, n) for n in self.names]
            layers = sorted(layer for layer in found if layer is not None)
            if not layers:
                raise KeyError(f"no layer of '{template}' is in this cache (it holds {len(self.names)} hook names)")
        tensors = [self.get(template.format(layer=layer), step, block) for layer in layers]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            by_shape = {
                shape: [layer for layer, t in zip(layers, tensors, strict=True) if tuple(t.shape) == shape]
                for shape in shapes
            }
            raise ValueError(
                f"'{template}' has different shapes across layers ({'; '.join(f'layers {v}: {list(k)}' for k, v in by_shape.items())}): "
                "(sliding and full layers differ in head size and in attended keys): pass layers= whose shapes agree"
            )
        return torch.stack(tensors)

    def filter(
        self,
        names: Iterable[str] | Callable[[str], bool] | None = None,
        steps: Iterable[int] | None = None,
        blocks: Iterable[int] | None = None,
    ) -> DenoisingCache:
        """A new cache with the selected entries (sharing the tensors)."""
        keep_name = names if callable(names) else (lambda n, s=set(names): n in s) if names is not None else None
        step_set = set(steps) if steps is not None else None
        block_set = set(blocks) if blocks is not None else None
        result = DenoisingCache(self.device, self.dtype, None, self.positions)
        for (name, step, block), tensor in self._store.items():
            if keep_name is not None and not keep_name(name):
                continue
            if step_set is not None and step not in step_set:
                continue
            if block_set is not None and block not in block_set:
                continue
            result._store[(name, step, block)] = tensor
            result._nbytes += tensor.numel() * tensor.element_size()
        return result

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DenoisingCache:
        result = DenoisingCache(device or self.device, dtype or self.dtype, None, self.positions)
        for (name, step, block), tensor in self._store.items():
            result.add(name, step, block, tensor)
        return result

    def __repr__(self) -> str:
        return f"DenoisingCache({len(self.names)} hooks, {len(self)} entries, {human_bytes(self.nbytes)})"

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write to one safetensors file with JSON metadata (atomic)."""
        tensors, entries = {}, []
        for index, ((name, step, block), tensor) in enumerate(self._store.items()):
            tensors[f"t{index}"] = tensor
            entries.append([name, step, block])
        meta = {"entries": entries, "positions": list(self.positions) if self.positions is not None else None}
        return save_records(path, KIND, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> DenoisingCache:
        """Read a cache saved by :meth:`save` (its tensors are used as read, not copied again; moved to
        ``device`` if given); a :class:`~diffinterp.records.serialization.RecordError` names the field
        of any file that does not match its own description. A folder written by
        ``run_with_cache(store=...)`` opens the same way (:func:`diffinterp.records.streamed.load_store`)."""
        if Path(path).is_dir():
            return load_store(path, device)
        tensors, meta = load_records(path, KIND)
        require_keys(path, meta, ("entries", "positions"), "meta")
        entries, positions = meta["entries"], meta["positions"]
        require(path, isinstance(entries, list), "meta.entries", "must be a list of [name, step, block]")
        require(path, positions is None or (isinstance(positions, list) and all(isinstance(p, int) for p in positions)),
                "meta.positions", f"must be null or a list of ints, got {positions!r}")  # fmt: skip
        require(path, len(entries) == len(tensors), "meta.entries",
                f"lists {len(entries)} entries for {len(tensors)} stored tensors")  # fmt: skip
        cache = cls(device=device, positions=tuple(positions) if positions is not None else None)
        for index, entry in enumerate(entries):
            ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
            ok = ok and (entry[1] is None or isinstance(entry[1], int)) and isinstance(entry[2], int)
            require(path, ok, f"meta.entries[{index}]", f"must be [hook name, step or null, block], got {entry!r}")
            name, step, block = entry
            require(path, f"t{index}" in tensors, f"t{index}", f"entry {entry} has no stored tensor")
            require(path, (step is None) == name.startswith("encoder."), f"meta.entries[{index}]",
                    f"'{name}' with step {step!r}: encoder entries have no step, decoder entries one")  # fmt: skip
            key = (name, step, block)
            require(path, key not in cache._store, f"meta.entries[{index}]", f"{entry} is listed twice")
            tensor = tensors[f"t{index}"]
            cache._store[key] = tensor if device is None else tensor.to(device)
            cache._nbytes += tensor.numel() * tensor.element_size()
        return cache


def load_store(folder: str | Path, device=None) -> DenoisingCache:
    """Open a folder written by ``run_with_cache(store=...)`` (a ``StreamedCache``): every shard checked, tensors mapped from disk."""
    folder = Path(folder)
    index_file = folder / INDEX
    if not index_file.is_file():
        raise FileNotFoundError(f"{folder} has no {INDEX}: not a cache folder written by run_with_cache(store=...)")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as err:
        raise RecordError(index_file, "file", f"not valid JSON ({err})") from err
    require(index_file, isinstance(index, dict) and index.get("format") == STORE_FORMAT, "format",
            f"must be '{STORE_FORMAT}'")  # fmt: skip
    require(index_file, index.get("version") == STORE_VERSION, "version",
            f"{index.get('version')}; this diffinterp reads version {STORE_VERSION}")  # fmt: skip
    shards, entries, positions = index.get("shards"), index.get("entries"), index.get("positions")
    require(index_file, isinstance(shards, list) and isinstance(entries, list), "shards/entries", "must be lists")
    cache = DenoisingCache(device=device, positions=tuple(positions) if positions is not None else None)
    records = [load_records(folder / shard, SHARD_KIND) for shard in shards]
    loaded = [tensors for tensors, _ in records]
    # what each shard says it holds: the index must agree (an index of another run would not)
    held = [{f"t{i}": tuple(entry) for i, entry in enumerate(meta.get("entries", []))} for _, meta in records]
    for number, entry in enumerate(entries):
        ok = isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], str) and isinstance(entry[3], int)
        ok = ok and 0 <= entry[3] < len(loaded) and entry[4] in loaded[entry[3]]
        require(
            index_file,
            ok,
            f"entries[{number}]",
            f"must be [name, step, block, shard, tensor] of a stored tensor, got {entry!r}",
        )
        name, step, block, shard, tensor_name = entry
        key = (name, step, block)
        require(index_file, held[shard].get(tensor_name) == key, f"entries[{number}]",
                f"{key} is in {shards[shard]} as {held[shard].get(tensor_name)}: the index belongs to another store")  # fmt: skip
        require(index_file, key not in cache._store, f"entries[{number}]", f"{key} is listed twice")
        tensor = loaded[shard][tensor_name]
        cache._store[key] = tensor if device is None else tensor.to(device)
        cache._nbytes += tensor.numel() * tensor.element_size()
    return cache


def caching_taps(cache: DenoisingCache, names: list[str], positions: tuple[int, ...] | None, *, where) -> list[tuple]:
    """Taps (``HookedDiffusionGemma.taps``) that store each activation into ``cache`` under
    (name, step, block); ``positions`` keeps only those canvas positions of decoder activations.

    ``where`` is the model's run context (``hm.context``): its ``step`` and ``block`` are read as
    plain attributes, two calls per activation fewer than the hook point's properties (a
    full-trajectory cache makes thousands; ``benchmarks/instructions.py``)."""
    cache.positions = positions
    add = cache.add
    if positions is None:

        def tap(tensor: torch.Tensor, hook) -> None:
            add(hook.name, where.step, where.block, tensor)

        return [(name, tap) for name in names]
    index_cache: dict[torch.device, torch.Tensor] = {}

    def tap_positions(tensor: torch.Tensor, hook) -> None:
        if where.stack == "decoder":
            dim = hook.pos_dim if hook.pos_dim is not None else 1
            if tensor.device not in index_cache:
                index_cache[tensor.device] = torch.tensor(positions, device=tensor.device)
            tensor = tensor.index_select(dim, index_cache[tensor.device])
        add(hook.name, where.step, where.block, tensor)

    return [(name, tap_positions) for name in names]


def _layer_template(name: str) -> str:
    """``"resid_post"`` / ``"hook_resid_post"`` / ``"attn.hook_z"`` -> ``"decoder.blocks.{layer}.hook_resid_post"``."""
    parts = name.split(".")
    if not parts[-1].startswith("hook_"):
        parts[-1] = f"hook_{parts[-1]}"
    return "decoder.blocks.{layer}." + ".".join(parts)


def _layer_of(template: str, name: str) -> int | None:
    head, tail = template.split("{layer}")
    middle = name[len(head) : len(name) - len(tail)] if name.startswith(head) and name.endswith(tail) else ""
    return int(middle) if middle.isdigit() else None


@functools.cache
def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def human_bytes(nbytes: float) -> str:
    """``nbytes`` in B, KiB, MiB, GiB or TiB, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes} B"


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    if values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))
