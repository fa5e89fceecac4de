"""Writing output files atomically: text, JSON and matplotlib figures appear whole or not at all.

Each file is written to a temporary name in the same folder and renamed into place
(``os.replace``), so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temporary file and ``os.replace``: the file is complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (see :func:`write_text_atomic`); NaN becomes ``null``
    (strict JSON has no NaN)."""
    return write_text_atomic(path, json.dumps(_finite(data), indent=2, default=_json_default) + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return _finite(value.tolist())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _finite(value.tolist())
    raise TypeError(f"cannot write {type(value).__name__} to metrics.json")


def save_figure(fig, path: str | Path) -> list[Path]:
    """Save ``fig`` as ``path``.png and ``path``.svg (each atomically) and close it; the written paths."""
    import matplotlib.pyplot as plt

    stem = Path(path).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for suffix in (".png", ".svg"):
            target = stem.with_suffix(suffix)
            handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(handle)
            try:
                fig.savefig(temporary, format=suffix[1:], bbox_inches="tight")
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            written.append(target)
    finally:
        plt.close(fig)
    return written
