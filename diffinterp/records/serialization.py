"""Saving records as one safetensors file with JSON metadata: streamed, checksummed, written atomically.

The file is a standard safetensors file (any safetensors reader opens it). Its metadata holds
``format`` (which record kind), ``version``, ``meta`` (JSON: the record's own description) and
``schema`` (JSON: for every tensor its dtype, shape and XXH3-64 hash of its bytes). Loading checks all of
them against each other and against the tensors actually stored, and raises one error type,
:class:`RecordError`, naming the file and the field for any mismatch: a flipped byte, a header
whose dtype or shape was edited, renamed or swapped entries, metadata that does not describe the
file. The hash detects corruption and accidents, not deliberate forgery. XXH3 (python-xxhash)
runs at memory speed, faster than reading the tensor once with torch, so a verified load costs
what touching the data costs; version-2 files carry a CRC-32 instead and are still read.

Writing streams one tensor at a time to a temporary file in the same folder (no second copy of the
record in memory), fsyncs it and renames it into place, so a crash never leaves a half-written file
under the final name; leftovers of an interrupted save of the same path are removed by the next.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import SafetensorError, safe_open

from diffinterp.records.files import follow_umask

FORMAT_VERSION = 3
#: Versions this diffinterp reads, and the schema field holding each one's checksum.
CHECKSUM_FIELDS = {"2": "crc32", "3": "xxh3_64"}
#: safetensors dtype names and the torch dtypes records use.
DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_BYTE_VIEWS = {torch.bfloat16: torch.int16, torch.bool: torch.uint8}  # dtypes numpy cannot hold


class RecordError(ValueError):
    """A record file that is missing, unreadable, or does not match its own description."""

    def __init__(self, path: str | Path, field: str, problem: str):
        self.path, self.field = Path(path), field
        super().__init__(f"{path}: {field}: {problem}")


def _bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without copying."""
    view = tensor.view(_BYTE_VIEWS[tensor.dtype]) if tensor.dtype in _BYTE_VIEWS else tensor
    return memoryview(view.numpy()).cast("B") if tensor.numel() else memoryview(b"")


def checksum(tensor: torch.Tensor, kind: str = "xxh3_64") -> int:
    """A hash of a tensor's bytes (as stored: contiguous, little-endian): XXH3-64, or the CRC-32 of
    version-2 files (``kind="crc32"``)."""
    data = _bytes(tensor.detach().cpu().contiguous())
    return zlib.crc32(data) if kind == "crc32" else xxhash.xxh3_64_intdigest(data)


def _clean_leftovers(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def save_records(path: str | Path, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` to ``path`` (atomically, one tensor in memory at a time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(path)
    entries, schema, offset = {}, {}, 0
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPES:
            raise TypeError(
                f"record tensor '{name}' has dtype {tensor.dtype}; records store {sorted(map(str, DTYPES))}"
            )
        size = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        schema[name] = {"dtype": DTYPES[tensor.dtype], "shape": list(tensor.shape), "xxh3_64": checksum(tensor)}
        offset += size
    metadata = {"format": kind, "version": str(FORMAT_VERSION), "meta": json.dumps(meta), "schema": json.dumps(schema)}
    header = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads the header to a multiple of 8 bytes
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(struct.pack("<Q", len(header)))
            file.write(header)
            for tensor in tensors.values():
                file.write(_bytes(tensor.detach().cpu().contiguous()))
            file.flush()
            os.fsync(file.fileno())
        follow_umask(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_records(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_records`, checking kind, version, schema and checksums."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise RecordError(path, "file", f"not a readable {kind} file (truncated or corrupted?): {err}") from err
    found = metadata.get("format")
    if found != kind:
        raise RecordError(path, "format", f"holds a '{found}' record, not a '{kind}'; load it with the matching class")
    version = metadata.get("version")
    if version not in CHECKSUM_FIELDS:
        raise RecordError(
            path,
            "version",
            f"{kind} format version {version}; this diffinterp reads versions {', '.join(CHECKSUM_FIELDS)}",
        )
    meta = _json_field(path, metadata, "meta", dict)
    schema = _json_field(path, metadata, "schema", dict)
    verify_schema(path, tensors, schema, CHECKSUM_FIELDS[version])
    return tensors, meta


def _json_field(path: Path, metadata: dict, field: str, kind: type):
    try:
        value = json.loads(metadata[field])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise RecordError(path, field, f"missing or not valid JSON ({err})") from err
    if not isinstance(value, kind):
        raise RecordError(path, field, f"must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def verify_schema(path: Path, tensors: dict[str, torch.Tensor], schema: dict, hashed: str = "xxh3_64") -> None:
    """Every stored tensor is in the schema with its dtype, shape and checksum, and nothing is missing."""
    missing, extra = sorted(set(schema) - set(tensors)), sorted(set(tensors) - set(schema))
    if missing or extra:
        raise RecordError(
            path, "schema", f"entries {missing[:3]} are described but absent, {extra[:3]} stored but not described"
        )
    for name, tensor in tensors.items():
        entry = schema[name]
        if not isinstance(entry, dict) or not {"dtype", "shape", hashed} <= set(entry):
            raise RecordError(path, f"schema.{name}", f"needs dtype, shape and {hashed}")
        if DTYPES.get(tensor.dtype) != entry["dtype"]:
            raise RecordError(
                path, f"tensor {name}", f"stored as {DTYPES.get(tensor.dtype)}, described as {entry['dtype']}"
            )
        if list(tensor.shape) != list(entry["shape"]):
            raise RecordError(
                path, f"tensor {name}", f"stored with shape {list(tensor.shape)}, described as {entry['shape']}"
            )
        if checksum(tensor, hashed) != entry[hashed]:
            raise RecordError(path, f"tensor {name}", "checksum mismatch: its bytes changed since it was saved")


def require(path: str | Path, condition: bool, field: str, problem: str) -> None:
    """Raise :class:`RecordError` unless ``condition``: the loaders' cross-checks of metadata and tensors."""
    if not condition:
        raise RecordError(path, field, problem)


def require_keys(path: str | Path, mapping: Any, keys: Iterable[str], field: str) -> None:
    require(path, isinstance(mapping, dict), field, f"must be a JSON object, got {type(mapping).__name__}")
    missing = [key for key in keys if key not in mapping]
    require(path, not missing, field, f"missing {missing}")
