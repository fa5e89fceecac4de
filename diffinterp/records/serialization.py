"""Saving records as one safetensors file with JSON metadata, written atomically.

The file's metadata holds ``format`` (which record kind), ``version`` and ``meta`` (JSON). A file
is written to a temporary name in the same folder and renamed into place, so a crash never leaves
a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT_VERSION = 1


def save_records(path: str | Path, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    metadata = {"format": kind, "version": str(FORMAT_VERSION), "meta": json.dumps(meta)}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(payload, temporary, metadata=metadata)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_records(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_records`, checking its kind and version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable {kind} file (truncated or corrupted?): {err}") from err
    found = metadata.get("format")
    if found != kind:
        raise ValueError(f"{path} holds a '{found}' record, not a '{kind}'; load it with the matching class")
    version = metadata.get("version")
    if version != str(FORMAT_VERSION):
        raise ValueError(f"{path} has {kind} format version {version}; this diffinterp reads version {FORMAT_VERSION}")
    try:
        meta = json.loads(metadata["meta"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} has no valid JSON metadata: {err}") from err
    return tensors, meta
