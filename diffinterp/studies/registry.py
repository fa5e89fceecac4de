"""The case-study registry: every study is an entry point of the ``diffinterp.case_studies`` group.

A study is a module with ``run(model, *, n, out_dir, seed, quick, ...) -> metrics`` (or the
``run`` function itself), registered by any installed distribution::

    # pyproject.toml of a separate package
    [project.entry-points."diffinterp.case_studies"]
    my-study = "mypkg.mystudy"

and ``diffinterp case-study my-study`` then runs it with every shared flag. The built-in studies
(``case_studies/``) register the same way in diffinterp's own ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

ENTRY_POINT_GROUP = "diffinterp.case_studies"


@dataclass(frozen=True)
class StudyEntry:
    """A registered study: its CLI ``name``, the entry point's ``target`` (``module`` or
    ``module:attribute``) and the ``distribution`` that registered it."""

    name: str
    target: str
    distribution: str | None


@dataclass(frozen=True)
class Study:
    """A loaded study: ``run`` and the first paragraph of its docstring (``description``)."""

    name: str
    run: Callable[..., dict[str, Any]]
    description: str


def available_studies() -> dict[str, StudyEntry]:
    """Every registered study by name, sorted (a name registered twice is an error naming both)."""
    entries: dict[str, StudyEntry] = {}
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = point.dist.name if point.dist is not None else None
        entry = StudyEntry(point.name, point.value, dist)
        if point.name in entries and entries[point.name].target != point.value:
            raise ValueError(
                f"case study '{point.name}' is registered twice: {entries[point.name].target} "
                f"({entries[point.name].distribution}) and {point.value} ({dist}); rename one entry point"
            )
        entries[point.name] = entry
    return dict(sorted(entries.items()))


def load_study(name: str) -> Study:
    """Import the study registered as ``name``; a clear error for unknown names or a target without ``run``."""
    entries = available_studies()
    if name not in entries:
        import difflib

        close = difflib.get_close_matches(name, list(entries), n=2)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"no case study named '{name}'{hint} (registered: {', '.join(entries) or 'none'})")
    target = entries[name].target
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    run = obj.run if isinstance(obj, ModuleType) else obj
    if not callable(run):
        raise TypeError(f"case study '{name}' ({target}) has no run(model, *, n, out_dir, ...) function")
    return Study(name, run, first_paragraph(inspect.getdoc(obj) or inspect.getdoc(module) or ""))


def first_paragraph(doc: str) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())
