"""Figures of variable transparency: opaque depth per chained step, accuracy per bottleneck mode."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffinterp.figures.style import STYLE, drawn_legend, integer_ticks, wrap_label  # noqa: E402

MODE_COLOURS = {  # Okabe-Ito, colour-blind safe
    "continuous": "#D55E00",
    "argmax": "#0072B2",
    "sample": "#009E73",
    "none": "#999999",
    "topk": "#CC79A7",
    "topp": "#56B4E9",
}


def _mode_colour(mode: str) -> str:
    return MODE_COLOURS.get(mode.split(":")[0].split(" ")[0], "#E69F00")


def depth_per_step(chains: dict[str, list[int]], ar_depth: int, n_steps: int):
    """Opaque serial depth of the logits after each of ``n_steps`` chained steps, per signal mode.

    ``chains`` maps a mode to its depth after steps 1..n_steps; the AR depth per token is a line.
    """
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        steps = list(range(1, n_steps + 1))
        for mode, depths in chains.items():
            style = "--" if "acceptance" in mode else (":" if "opaque" in mode else "-")
            ax.plot(steps, depths[:n_steps], style, color=_mode_colour(mode), label=mode, linewidth=1.5)
        ax.axhline(ar_depth, color="black", linewidth=1, linestyle=":", label="AR Gemma 4, per token")
        ax.set_yscale("log")
        integer_ticks(ax, x=True)
        ax.set_xlabel("denoising steps chained (N)")
        ax.set_ylabel("opaque serial depth")
        ax.set_title("Opaque serial depth by self-conditioning signal")
        drawn_legend(ax, fontsize=7, frameon=False)
    return fig


def accuracy_per_mode(results: dict[str, dict[str, dict]]):
    """Exact-match accuracy with 95% intervals: ``results[task][mode]["accuracy"]`` a proportion dict
    (``value``, ``ci_low``, ``ci_high``); tasks without reference answers are left out."""
    tasks = [t for t, modes in results.items() if all("accuracy" in entry for entry in modes.values())]
    modes = list(results[tasks[0]]) if tasks else []
    width = 0.8 / max(1, len(modes))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(tasks) + 2), 3.4))
        for index, mode in enumerate(modes):
            xs = [t + (index - (len(modes) - 1) / 2) * width for t in range(len(tasks))]
            stats = [results[task][mode]["accuracy"] for task in tasks]
            values = [entry["value"] for entry in stats]
            # Interval bounds can sit a rounding error inside the estimate at 0 or 1.
            low = [max(0.0, v - entry["ci_low"]) for entry, v in zip(stats, values, strict=True)]
            high = [max(0.0, entry["ci_high"] - v) for entry, v in zip(stats, values, strict=True)]
            ax.bar(xs, values, width, yerr=[low, high], capsize=2, color=_mode_colour(mode), label=mode)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([wrap_label(t) for t in tasks])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("exact match (95% CI)")
        ax.set_title("Accuracy by self-conditioning bottleneck")
        drawn_legend(
            ax, fontsize=7, frameon=False, ncol=min(5, len(modes)), loc="upper center", bbox_to_anchor=(0.5, -0.1)
        )
    return fig
