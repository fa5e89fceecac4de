"""The output folder of one study run: figures as they are made, ``metrics.json`` at the end.

with StudyOutput("out/my_study") as out:
    out.figure(fig, "settling")                    # PNG + SVG, listed in metrics["figures"]
    out.metrics.update(summary={...}, per_task={...})
                                                   # metrics.json written atomically on exit
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffinterp.records.files import save_figure, write_json_atomic


@dataclass
class StudyOutput:
    """The output folder of one study run: figures as they are made, ``metrics.json`` at the end.

    Use as a context manager: ``metrics.json`` is written on a clean exit (with ``figures``, the
    saved figure paths relative to the folder), and not at all when the body raises, so a failed
    run never leaves metrics that look complete.
    """

    out_dir: str | Path
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)

    def __enter__(self) -> StudyOutput:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.write()
        return False

    def figure(self, fig, name: str) -> list[Path]:
        """Save ``fig`` as ``name.png`` and ``name.svg`` in the folder (closing it); record the PNG."""
        paths = save_figure(fig, self.out_dir / name)
        self.figures.append(f"{name}.png")
        return paths

    def write(self) -> Path:
        self.metrics["figures"] = list(self.figures)
        return write_json_atomic(self.out_dir / "metrics.json", self.metrics)
