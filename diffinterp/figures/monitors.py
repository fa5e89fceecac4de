"""Figures of the monitorability study: AUROC bars, AUROC per step, ROC curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffinterp.figures.style import OKABE_ITO, STYLE, drawn_legend, integer_ticks, wrap_label  # noqa: E402


def _colours(k: int) -> list[str]:

    return [OKABE_ITO[i % len(OKABE_ITO)] for i in range(k)]


def _err(cis: list[dict]) -> tuple[list[float], list[float], list[float]]:
    values = [c["value"] if c.get("value") is not None else np.nan for c in cis]
    low = [max(0.0, v - c["ci_low"]) if c.get("ci_low") is not None else 0.0 for v, c in zip(values, cis, strict=True)]
    high = [
        max(0.0, c["ci_high"] - v) if c.get("ci_high") is not None else 0.0 for v, c in zip(values, cis, strict=True)
    ]
    return values, low, high


def auroc_bars(results: dict[str, dict[str, dict]], title: str = "Monitor AUROC by source (95% CI)"):
    """Grouped bars: ``results[source][monitor] = {value, ci_low, ci_high}``; monitors on the x axis."""

    sources = list(results)
    monitors = list(dict.fromkeys(m for per in results.values() for m in per))
    width = 0.8 / max(1, len(sources))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(monitors) + 2), 3.6))
        for i, (source, colour) in enumerate(zip(sources, _colours(len(sources)), strict=True)):
            cis = [results[source].get(m, {}) for m in monitors]
            values, low, high = _err(cis)
            xs = [j + (i - (len(sources) - 1) / 2) * width for j in range(len(monitors))]
            ax.bar(
                xs, values, width, color=colour, label=source, yerr=[low, high], capsize=2, error_kw={"linewidth": 0.8}
            )
        ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":", label="chance")
        ax.set_xticks(range(len(monitors)))
        ax.set_xticklabels([wrap_label(m, 12) for m in monitors], fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("AUROC")
        ax.set_title(title)
        drawn_legend(
            ax, fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(sources) + 1
        )
    return fig


def auroc_per_step(per_step: dict[str, list[dict]], finals: dict[str, dict] | None = None):
    """AUROC (95% CI band) of each monitor on the argmax draft of each denoising step; ``finals``
    (monitor -> CI) are drawn as dashed lines (the final canvas)."""

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.6, 3.4))
        markers = "osD^v<>p"
        for k, ((monitor, cis), colour) in enumerate(zip(per_step.items(), _colours(len(per_step)), strict=True)):
            steps = np.arange(len(cis))
            values = np.array([c["value"] if c.get("value") is not None else np.nan for c in cis], dtype=float)
            low = np.array([c["ci_low"] if c.get("ci_low") is not None else np.nan for c in cis], dtype=float)
            high = np.array([c["ci_high"] if c.get("ci_high") is not None else np.nan for c in cis], dtype=float)
            # Identical curves (e.g. all at 1.0) stay visible: later ones are thinner, with other markers.
            width = 2.4 - 1.6 * k / max(1, len(per_step) - 1)
            ax.plot(
                steps,
                values,
                "-",
                marker=markers[k % 8],
                color=colour,
                label=monitor,
                markersize=6 - k,
                linewidth=width,
            )
            ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
            final = (finals or {}).get(monitor, {}).get("value")
            if final is not None:
                ax.axhline(final, color=colour, linestyle="--", linewidth=0.8)
        ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
        ax.set_ylim(0, 1.05)
        integer_ticks(ax, x=True)
        ax.set_xlabel("denoising step of the draft (0 = first draft from noise)")
        ax.set_ylabel("AUROC")
        ax.set_title("Hidden property in the argmax drafts (dashed: final canvas)")
        drawn_legend(ax, fontsize=7, frameon=False)
    return fig


def roc_figure(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]):
    """ROC curves: ``curves[monitor][source] = (fpr, tpr)``; colour = monitor, line style = source."""

    styles = ["-", "--", ":", "-."]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.4, 4.0))
        for i, ((monitor, per_source), colour) in enumerate(zip(curves.items(), _colours(len(curves)), strict=True)):
            for k, (source, (fpr, tpr)) in enumerate(per_source.items()):
                width = (3.4 - 0.8 * min(i, 2)) / (1 + k)  # a curve drawn over another leaves its edges visible
                ax.plot(fpr, tpr, color=colour, linestyle=styles[k % 4], linewidth=width, label=f"{monitor}, {source}")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title("ROC curves of the monitors")
        drawn_legend(ax, fontsize=6, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return fig


__all__ = [
    "auroc_bars",
    "auroc_per_step",
    "roc_figure",
]
