"""The output folder of one study run: figures as they are made, ``metrics.json`` at the end.

with StudyOutput("out/my_study") as out:
    out.figure(fig, "settling")                    # PNG + SVG, listed in metrics["figures"]
    out.metrics.update(summary={...}, per_task={...})
                                                   # metrics.json written atomically on exit
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffinterp.records.files import atomic_folder, save_figure, write_json_atomic


@dataclass
class StudyOutput:
    """The output folder of one study run: figures as they are made, ``metrics.json`` at the end.

    Use as a context manager. Everything is written into a staging folder beside ``out_dir``
    (:attr:`path`); on a clean exit ``metrics.json`` is added (with ``figures``, the saved figure
    paths relative to the folder) and the staging folder replaces ``out_dir`` whole, so no file of
    an earlier run is left mixed in. When the body raises, ``out_dir`` is left as it was and the
    staging folder is removed: a failed run never leaves metrics that look complete.
    """

    out_dir: str | Path
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self._stack: ExitStack | None = None
        self._folder: Path | None = None

    @property
    def path(self) -> Path:
        """Where the run's files go while it runs (the staging folder; ``out_dir`` outside a ``with``)."""
        return self._folder if self._folder is not None else self.out_dir

    def __enter__(self) -> StudyOutput:
        self._stack = ExitStack()
        self._folder = self._stack.enter_context(atomic_folder(self.out_dir))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        try:
            if exc_type is None:
                self.write()
        except BaseException:
            self._folder = None
            stack.__exit__(*sys.exc_info())  # the staging folder goes; out_dir stays as it was
            raise
        self._folder = None
        stack.__exit__(exc_type, exc, tb)  # clean: the folder replaces out_dir; else staging is removed
        return False

    def figure(self, fig, name: str) -> list[Path]:
        """Save ``fig`` as ``name.png`` and ``name.svg`` in the folder (closing it); record the PNG."""
        paths = save_figure(fig, self.path / name)
        self.figures.append(f"{name}.png")
        return paths

    def file(self, name: str) -> Path:
        """The path of another output file (e.g. a table) inside the folder."""
        return self.path / name

    def write(self) -> Path:
        self.metrics["figures"] = list(self.figures)
        return write_json_atomic(self.path / "metrics.json", self.metrics)
