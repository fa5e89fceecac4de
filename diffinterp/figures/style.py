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
