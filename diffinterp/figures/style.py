"""The one figure style of the package, and its colour-blind-safe colours.

``STYLE`` (matplotlib rc settings) for every figure; ``cividis`` for magnitudes, ``PuOr``
(diverging, centred on 0) for signed effects, Okabe-Ito colours for lines and bars. Figures are
written with :func:`diffinterp.records.files.save_figure` (PNG + SVG, atomically).
"""

from __future__ import annotations

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "figure.dpi": 150,
    "savefig.bbox": "tight",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
SEQUENTIAL_CMAP = "cividis"
DIVERGING_CMAP = "PuOr"
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000"]


def integer_ticks(ax, *, x: bool = False, y: bool = False) -> None:
    """Ticks only at whole numbers on the named axes (steps, layers, positions, counts)."""
    from matplotlib.ticker import MaxNLocator

    if x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _drawn(handle) -> bool:
    """Whether a legend handle's artist shows any data (a bar or line of NaNs draws nothing)."""
    import numpy as np

    if hasattr(handle, "patches"):  # a BarContainer
        return any(np.isfinite(p.get_height()) and np.isfinite(p.get_width()) for p in handle.patches)
    if hasattr(handle, "get_ydata"):
        if handle.get_linestyle() in ("None", "") and handle.get_marker() in ("None", "", None):
            return False
        y = np.asarray(handle.get_ydata(), dtype=float)
        return y.size == 0 or bool(np.isfinite(y).any())  # an axhline-style artist has data
    if hasattr(handle, "get_offsets"):  # scatter
        offsets = np.asarray(handle.get_offsets(), dtype=float)
        return bool(offsets.size and np.isfinite(offsets).all(axis=-1).any())
    return True


def drawn_legend(ax, **kwargs):
    """A legend with an entry only for what is drawn; no legend when nothing is. Returns it (or None)."""
    handles, labels = ax.get_legend_handles_labels()
    kept = [(h, lab) for h, lab in zip(handles, labels, strict=True) if _drawn(h)]
    if not kept:
        return None
    handles, labels = zip(*kept, strict=True)
    for key in ("ncol", "ncols"):
        if key in kwargs:
            kwargs[key] = max(1, min(kwargs[key], len(kept)))
    return ax.legend(handles, labels, **kwargs)


def wrap_label(text: str, width: int = 10) -> str:
    """A category label broken onto lines of about ``width`` characters (at spaces, ``_`` or ``-``),
    so tick labels stay horizontal and whole."""
    import re

    words = [w for w in re.split(r"(?<=[ _\-/])", str(text)) if w]
    lines, line = [], ""
    for word in words:
        if line and len(line) + len(word.rstrip(" ")) > width:
            lines.append(line.rstrip(" "))
            line = ""
        line += word
    lines.append(line.rstrip(" "))
    return "\n".join(lines)
