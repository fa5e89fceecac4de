"""Writing output files atomically: text, JSON and matplotlib figures appear whole or not at all.

Each file is written to a temporary name in the same folder and renamed into place
(``os.replace``), so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def umask() -> int:
    """The process's file-creation mask (read without changing it for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (temporary files are created 0600)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temporary file and ``os.replace``: the file is complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # what an interrupted earlier write left behind
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        follow_umask(temporary)
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
                follow_umask(temporary)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            written.append(target)
    finally:
        plt.close(fig)
    return written


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Fill a folder atomically: write into the yielded temporary sibling; on a clean exit it
    replaces ``path`` whole (an earlier folder there is removed, so no stale file of an earlier run
    stays beside the new ones); if the body raises, ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder; give a folder path for the output")
    for stale in (*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f".{path.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)  # what an interrupted earlier run left behind
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
        follow_umask(temporary, directory=True)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(temporary, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
