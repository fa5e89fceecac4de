"""Figures of transient tokens: rates per step, an example canvas, dependence bars."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffinterp.figures.canvas import canvas_evolution
from diffinterp.figures.style import OKABE_ITO, STYLE, drawn_legend, integer_ticks, wrap_label  # noqa: E402
from diffinterp.phenomena.transient import KINDS, TransientToken  # noqa: E402
from diffinterp.records.decoding import token_labels  # noqa: E402
from diffinterp.records.trajectory import Trajectory  # noqa: E402

KIND_COLOURS = {"canvas": "#D55E00", "argmax": "#0072B2", "control": "#999999"}  # Okabe-Ito


def rate_per_step_plot(rates: dict[str, dict[str, list[float | None]]]):
    """Transient tokens per active row at each step: ``rates[task][kind]`` -> one panel per kind,
    one line per task (``None`` steps, too few active rows, are left out)."""

    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(KINDS), figsize=(7.0, 2.8), sharey=True)
        for ax, kind in zip(axes, KINDS, strict=True):
            for i, (task, by_kind) in enumerate(rates.items()):
                values = by_kind.get(kind, [])
                steps = [s for s, v in enumerate(values) if v is not None]
                ax.plot(steps, [values[s] for s in steps], marker="o", ms=3, color=OKABE_ITO[i % 8], label=task)
            integer_ticks(ax, x=True)
            ax.set_xlabel("denoising step")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_title({"canvas": "accepted canvas (embedding + SC)", "argmax": "argmax only (SC)"}[kind])
        axes[0].set_ylabel("transient tokens per active row")
        drawn_legend(axes[-1], fontsize=7, frameon=False)
    return fig


def canvas_example_plot(trajectory: Trajectory, tokens: Sequence[TransientToken], row: int, tokenizer=None):
    """The argmax canvas of ``row`` per step (block of its first transient token), transient tokens
    boxed by kind: the study's example of scratch content that is written and then overwritten."""
    from matplotlib.patches import Patch, Rectangle

    mine = [t for t in tokens if t.row == row]
    block = mine[0].block if mine else 0
    fig = canvas_evolution(trajectory, block=block, row=row, tokenizer=tokenizer)
    ax = fig.axes[0]
    n_active = int(trajectory.stack("active", block)[:, row].sum())
    argmax = trajectory.stack("argmax", block)[:, row]
    canvas_out = trajectory.stack("canvas_out", block)[:, row]
    for t in mine:
        for step in range(t.first, t.last + 1):
            in_argmax = int(argmax[step, t.pos]) == t.token
            if not in_argmax and int(canvas_out[step, t.pos]) != t.token:
                continue  # the run's token was absent at this step (another transient token held it)
            colour = KIND_COLOURS[t.kind]
            ax.add_patch(Rectangle((t.pos - 0.5, step - 0.5), 1, 1, fill=False, lw=2.2, edgecolor=colour))
            if not in_argmax:  # accepted in the canvas but not the argmax: show the canvas token
                label = token_labels([t.token], tokenizer)[0]
                ax.text(t.pos, step + 0.36, f"c:{label}", ha="center", fontsize=5, color=colour, weight="bold")
    ax.set_ylim(n_active - 0.5, -0.5)  # steps after the row stopped only repeat its final canvas
    fig.set_size_inches(fig.get_size_inches()[0], max(2.5, 0.4 * n_active + 1.6))
    drawn_legend(
        ax,
        handles=[Patch(fill=False, edgecolor=KIND_COLOURS[k], label=f"transient ({k})") for k in KINDS],
        fontsize=7,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(0, -0.18),
        ncol=2,
    )
    ax.set_title(f"Argmax canvas per step, transient tokens boxed (row {row}; c: = accepted canvas token)")
    return fig


def dependence_plot(results: dict[str, dict[str, dict]], ylabel: str):
    """Bars with 95% CIs: ``results[task][label]`` = a :func:`diffinterp.stats.proportion` dict
    (labels e.g. ``"transient"`` / ``"control"``); ``None`` values are drawn as missing."""

    tasks = list(results)
    labels = list(dict.fromkeys(label for task in tasks for label in results[task]))
    colours = {"transient": KIND_COLOURS["canvas"], "control": KIND_COLOURS["control"]}
    extra = ["#009E73", "#CC79A7", "#F0E442"]
    width = 0.8 / max(len(labels), 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(3.6, 1.3 * len(tasks) + 1.5), 3.0))
        for j, label in enumerate(labels):
            xs, ys, lows, highs, counts = [], [], [], [], []
            for i, task in enumerate(tasks):
                value = results[task].get(label)
                if value is None or value.get("value") is None:
                    continue
                xs.append(i + (j - (len(labels) - 1) / 2) * width)
                ys.append(value["value"])
                lows.append(max(0.0, value["value"] - value["ci_low"]))
                highs.append(max(0.0, value["ci_high"] - value["value"]))
                counts.append(f"{value['k']}/{value['n']}")
            ax.bar(xs, ys, width, color=colours.get(label, extra[j % len(extra)]), label=label)
            ax.errorbar(xs, ys, yerr=np.array([lows, highs]), fmt="none", ecolor="black", lw=0.8, capsize=2)
            for x, y, high, text in zip(xs, ys, highs, counts, strict=True):  # k/n above each bar, upright
                ax.text(x, min(y + high + 0.02, 1.02), text.replace("/", "/\n"), ha="center", va="bottom", fontsize=5.5)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([wrap_label(t) for t in tasks])
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(ylabel)
        ax.set_title("Outputs that depend on transient tokens vs controls")
        drawn_legend(ax, fontsize=7, frameon=False)
    return fig
