"""Figures of settling: settle step by dependency round, order-agreement bars, settle heatmaps with rounds."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffinterp.figures.style import OKABE_ITO, SEQUENTIAL_CMAP, STYLE, drawn_legend, integer_ticks  # noqa: E402
from diffinterp.records.decoding import token_labels  # noqa: E402


def _bar_values(stats: Sequence[dict]) -> tuple[list[float], list[list[float]]]:
    """Bar heights (0 where unmeasured) and non-negative error-bar extents from proportion dicts."""
    vals = [s["value"] if s["value"] is not None else 0.0 for s in stats]
    low = [max(0.0, v - s["ci_low"]) if s["value"] is not None else 0.0 for v, s in zip(vals, stats, strict=True)]
    high = [max(0.0, s["ci_high"] - v) if s["value"] is not None else 0.0 for v, s in zip(vals, stats, strict=True)]
    return vals, [low, high]


__all__ = []


def settle_by_round(results: dict[str, dict], title: str | None = None):
    """Mean settle step per ground-truth round (95% CI), one line per task and order kind
    (``results[task][kind]["settle_step_by_round"]``, kinds ``prediction`` solid, ``commit`` dashed)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 3.2), layout="constrained")
        drawn = 0
        for i, (task, result) in enumerate(results.items()):
            for kind, style in (("prediction", "-"), ("commit", "--")):
                by_round = result.get(kind, {}).get("settle_step_by_round")
                if not by_round:
                    continue
                rounds = [int(r) for r in by_round]
                values = [by_round[str(r)]["value"] for r in rounds]
                low = [v - by_round[str(r)]["ci_low"] for r, v in zip(rounds, values, strict=True)]
                high = [by_round[str(r)]["ci_high"] - v for r, v in zip(rounds, values, strict=True)]
                ax.errorbar(rounds, values, yerr=[low, high], linestyle=style, marker="o", markersize=3,
                            capsize=2, color=OKABE_ITO[i % len(OKABE_ITO)], label=f"{task} ({kind})")  # fmt: skip
                drawn += 1
        if drawn:
            drawn_legend(ax, fontsize=7, frameon=False)
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            ax.text(0.5, 0.5, "no ground-truth rounds", transform=ax.transAxes, ha="center", color="#666666")
        integer_ticks(ax, x=True, y=True)
        ax.set_xlabel("ground-truth round (dependency depth)")
        ax.set_ylabel("settle step")
        ax.set_title(title or "Settle step by dependency round (95% CI)", fontsize=9)
    return fig


def agreement_bars(results: dict[str, dict], title: str | None = None):
    """Per task, the mean per-row agreement of prediction and commit order with the dependency order
    and with left-to-right order (95% CIs); 0.5 is chance."""
    series = [("prediction", "dependency"), ("prediction", "left_to_right"), ("commit", "dependency"),
              ("commit", "left_to_right")]  # fmt: skip
    labels = ["prediction vs dependency", "prediction vs left-to-right", "commit vs dependency",
              "commit vs left-to-right"]  # fmt: skip
    tasks = list(results)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.5, 1.5 * len(tasks) + 2.5), 3.2), layout="constrained")
        width = 0.8 / len(series)
        for k, ((kind, against), label) in enumerate(zip(series, labels, strict=True)):
            stats = [results[t].get(kind, {}).get(against, {}).get("mean_agreement") for t in tasks]
            stats = [s if s is not None else {"value": None} for s in stats]
            values, err = _bar_values([{**s, "ci_low": s.get("ci_low"), "ci_high": s.get("ci_high")} for s in stats])
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(tasks))]
            ax.bar(xs, values, width, yerr=err, capsize=2, color=OKABE_ITO[[3, 0, 2, 1][k]],
                   hatch="" if kind == "prediction" else "//", label=label)  # fmt: skip
        ax.axhline(0.5, color="#999999", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels(tasks)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("pairs in that order")
        drawn_legend(ax, fontsize=7, frameon=False, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        ax.set_title(title or "Which order does the canvas settle in? (0.5 = chance)", fontsize=9)
    return fig


def round_heatmap(settle, tokens, rounds, rows: Sequence[int], tokenizer=None, title=None):
    """Settle step per position (colour) for example ``rows``, each cell labelled with its final token
    and, below it, its ground-truth round (``rounds`` ``[B, P]``, ``-1`` = not scored; ``None``: none)."""
    rows = list(rows)
    values = settle[rows].float().numpy()
    n_rows, n_pos = values.shape
    top = max(1.0, float(values.max()))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.5, 0.42 * n_pos + 1.8), 0.5 * n_rows + 1.3), layout="constrained")
        image = ax.imshow(values, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=top, aspect="auto")
        for i, row in enumerate(rows):
            labels = token_labels(tokens[row].tolist(), tokenizer)
            for pos in range(n_pos):
                colour = "white" if values[i, pos] < 0.55 * top else "black"
                ax.text(pos, i - 0.12, labels[pos], ha="center", va="center", fontsize=6, color=colour)
                if rounds is not None and int(rounds[row, pos]) >= 0:
                    ax.text(pos, i + 0.25, f"r{int(rounds[row, pos])}", ha="center", va="center", fontsize=5,
                            color=colour)  # fmt: skip
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels([f"row {r}" for r in rows], fontsize=7)
        ax.set_xticks(range(n_pos))
        ax.set_xlabel("canvas position (final token; r = ground-truth round)")
        ax.set_title(title or "Settle step per position", fontsize=9)
        fig.colorbar(image, ax=ax, label="settle step", fraction=0.03)
    return fig
