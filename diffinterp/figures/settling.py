"""Figures of settling: settle heatmaps, before/tie/after bars, lens curves, causal-test bars."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffinterp.figures.style import OKABE_ITO, SEQUENTIAL_CMAP, STYLE  # noqa: E402
from diffinterp.phenomena.settling import Regions  # noqa: E402
from diffinterp.records.decoding import token_labels  # noqa: E402


def _bar_values(stats: Sequence[dict]) -> tuple[list[float], list[list[float]]]:
    """Bar heights (0 where unmeasured) and non-negative error-bar extents from proportion dicts."""
    vals = [s["value"] if s["value"] is not None else 0.0 for s in stats]
    low = [max(0.0, v - s["ci_low"]) if s["value"] is not None else 0.0 for v, s in zip(vals, stats, strict=True)]
    high = [max(0.0, s["ci_high"] - v) if s["value"] is not None else 0.0 for v, s in zip(vals, stats, strict=True)]
    return vals, [low, high]


def settle_heatmap(settle, tokens, regions: Regions, last, rows: Sequence[int], tokenizer=None, title=None):
    """Settle step per position (colour) for example ``rows``, tokens written in the cells; answer
    cells outlined solid, dependency cells dashed; positions past each row's EOS greyed."""
    rows = list(rows)
    values = settle[rows].float().numpy()
    n_rows, n_pos = values.shape
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.5, 0.42 * n_pos + 1.8), 0.42 * n_rows + 1.3), layout="constrained")
        image = ax.imshow(values, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=max(1.0, float(values.max())), aspect="auto")
        for i, row in enumerate(rows):
            labels = token_labels(tokens[row].tolist(), tokenizer)
            for pos in range(n_pos):
                shade = values[i, pos] < 0.55 * max(1.0, float(values.max()))
                ax.text(pos, i, labels[pos][:4], ha="center", va="center", fontsize=6,
                        color="white" if shade else "black")  # fmt: skip
                for mask, style in ((regions.answer, "-"), (regions.dependency, "--")):
                    if mask[row, pos]:
                        ax.add_patch(plt.Rectangle((pos - 0.5, i - 0.5), 1, 1, fill=False, linestyle=style,
                                                   edgecolor=OKABE_ITO[4], linewidth=1.3))  # fmt: skip
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels([f"row {r} (last {int(last[r])})" for r in rows], fontsize=7)
        ax.set_xticks(range(n_pos))
        ax.set_xlabel("canvas position (final token)")
        ax.set_title(title or "Settle step per position (solid: answer, dashed: its reasoning)", fontsize=9)
        fig.colorbar(image, ax=ax, label="settle step", fraction=0.03)
    return fig


def _proportion_bars(results: dict[str, dict], series, labels, colours, *, width: float, title: str):
    """Grouped bars with 95% CIs: one group per key of ``results``, one bar per name in ``series``
    (``results[group][name]`` is a :func:`diffinterp.stats.proportion` dict)."""
    groups = list(results)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.0, width * len(groups) + 2.0), 3.0), layout="constrained")
        bar = 0.8 / len(series)
        for k, name in enumerate(series):
            x = np.arange(len(groups)) + (k - (len(series) - 1) / 2) * bar
            vals, err = _bar_values([results[g][name] for g in groups])
            ax.bar(x, vals, bar, color=colours[k], label=labels[k], yerr=err, capsize=2, error_kw={"linewidth": 0.8})
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{g}\n(n={results[g][series[0]]['n']})" for g in groups], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of samples")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def order_bars(fractions: dict[str, dict], title: str | None = None):
    """Grouped bars: before / tie / after fractions (with 95% CIs) per group (task)."""
    return _proportion_bars(
        fractions, ("before", "tie", "after"), ("answer settles before", "same step", "answer settles after"),
        [OKABE_ITO[2], OKABE_ITO[1], OKABE_ITO[4]], width=1.3,
        title=title or "Answer settles before / with / after the reasoning it depends on",
    )  # fmt: skip


def lens_curve(offsets, curves: dict[str, np.ndarray], counts, title: str | None = None):
    """Lens probability of the final tokens (one curve per region / layer choice) against the step
    relative to the reasoning's settle step (offset 0, marked); ``counts``: rows at each offset."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.8, 3.0), layout="constrained")
        for k, (name, values) in enumerate(curves.items()):
            ax.plot(offsets, values, marker="os^D"[k % 4], markersize=3.5, color=OKABE_ITO[[3, 0, 2, 5][k % 4]],
                    label=name, linewidth=1.4)  # fmt: skip
        ax.axvline(0, color="black", linewidth=0.8, linestyle=":", label="reasoning settles")
        ax.set_xticks(list(offsets))
        ax.set_xticklabels([f"{o}\n({c})" for o, c in zip(offsets, counts, strict=True)], fontsize=7)
        ax.set_xlabel("step − reasoning settle step (rows)")
        ax.set_ylabel("P(final token)")
        ax.set_ylim(0, 1.02)
        ax.set_title(title or "Logit lens: P(final token) around the reasoning's settle step", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def causal_bars(results: dict[str, dict], title: str | None = None):
    """Outcome fractions (95% CIs) per corruption condition: answer unchanged / follows / other, and
    whether the corrupted token survives in the final canvas."""
    first = next(iter(results.values()))
    names = [name for name in ("unchanged", "follows", "other", "survives") if name in first]
    labels = [{"survives": "corrupted token survives", "follows": "answer follows corruption"}.get(n, n) for n in names]
    palette = {"unchanged": OKABE_ITO[2], "follows": OKABE_ITO[4], "other": OKABE_ITO[7], "survives": OKABE_ITO[1]}
    return _proportion_bars(
        results, names, labels, [palette[n] for n in names], width=1.5,
        title=title or "Corrupting the reasoning token at one step (or from it on: persistent)",
    )  # fmt: skip


__all__ = [
    "causal_bars",
    "lens_curve",
    "order_bars",
    "settle_heatmap",
]
