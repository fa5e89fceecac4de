"""Figures from records: one function per figure kind, each returning a matplotlib Figure.

One style for all (``STYLE``), colour-blind-safe colour maps (cividis / viridis), and
``save_figure`` writing PNG and SVG side by side.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffinterp.trajectory import Trajectory  # noqa: E402

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


def token_labels(tokens, tokenizer=None) -> list[str]:
    """Readable labels for token ids: the tokenizer's pieces, or ``#id`` for ids it lacks."""
    ids = [int(t) for t in tokens]
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    return [tokenizer.convert_ids_to_tokens(i) or f"#{i}" for i in ids]


def canvas_evolution(trajectory: Trajectory, block: int = 0, row: int = 0, tokenizer=None, field: str = "argmax"):
    """Tokens per step (rows) and canvas position (columns), coloured by the step's entropy.

    Accepted positions are outlined; ``field`` picks which canvas is shown (argmax, sampled,
    canvas_in, canvas_out).
    """
    tokens = trajectory.stack(field, block)[:, row].cpu().numpy()
    entropy = trajectory.stack("entropy", block)[:, row].float().cpu().numpy()
    accepted = trajectory.stack("accepted", block)[:, row].cpu().numpy()
    n_steps, n_pos = tokens.shape
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * n_pos + 1.5), max(2.5, 0.32 * n_steps + 1.2)))
        image = ax.imshow(entropy, cmap=SEQUENTIAL_CMAP, aspect="auto", vmin=0)
        for step in range(n_steps):
            labels = token_labels(tokens[step], tokenizer)
            for pos in range(n_pos):
                colour = "black" if entropy[step, pos] > 0.6 * max(entropy.max(), 1e-9) else "white"
                weight = "bold" if accepted[step, pos] else "normal"
                ax.text(pos, step, labels[pos][:6], ha="center", va="center", fontsize=6, color=colour, weight=weight)
        ax.set_xlabel("canvas position")
        ax.set_ylabel("denoising step")
        ax.set_xticks(range(n_pos))
        ax.set_yticks(range(n_steps))
        ax.set_title(f"Canvas evolution ({field}; bold = accepted), block {block}, row {row}")
        fig.colorbar(image, ax=ax, label="entropy (nats)", fraction=0.03)
    return fig


def entropy_heatmap(trajectory: Trajectory, block: int = 0, row: int = 0):
    """Per-position entropy of the tempered logits: step × canvas position."""
    entropy = trajectory.stack("entropy", block)[:, row].float().cpu().numpy()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(
            figsize=(max(4.0, 0.3 * entropy.shape[1] + 1.5), max(2.5, 0.22 * entropy.shape[0] + 1.2))
        )
        image = ax.imshow(entropy, cmap=SEQUENTIAL_CMAP, aspect="auto", vmin=0)
        ax.set_xlabel("canvas position")
        ax.set_ylabel("denoising step")
        ax.set_title(f"Entropy per position and step, block {block}, row {row}")
        fig.colorbar(image, ax=ax, label="entropy (nats)", fraction=0.03)
    return fig


def save_figure(fig, path: str | Path) -> list[Path]:
    """Save ``fig`` as ``path``.png and ``path``.svg; the written paths."""
    stem = Path(path).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".svg"):
        target = stem.with_suffix(suffix)
        fig.savefig(target, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written


MODE_COLOURS = {  # Okabe-Ito, colour-blind safe
    "continuous": "#D55E00",
    "argmax": "#0072B2",
    "sample": "#009E73",
    "none": "#999999",
    "topk": "#CC79A7",
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
            style = "--" if "acceptance" in mode else "-"
            ax.plot(steps, depths[:n_steps], style, color=_mode_colour(mode), label=mode, linewidth=1.5)
        ax.axhline(ar_depth, color="black", linewidth=1, linestyle=":", label="AR Gemma 4, per token")
        ax.set_yscale("log")
        ax.set_xlabel("denoising steps chained (N)")
        ax.set_ylabel("opaque serial depth")
        ax.set_title("Opaque serial depth by self-conditioning signal")
        ax.legend(fontsize=7, frameon=False)
    return fig


def accuracy_per_mode(results: dict[str, dict[str, dict]]):
    """Exact-match accuracy with 95% intervals: ``results[task][mode] = {accuracy, ci_low, ci_high}``."""
    tasks = list(results)
    modes = list(next(iter(results.values())))
    width = 0.8 / max(1, len(modes))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(tasks) + 2), 3.4))
        for index, mode in enumerate(modes):
            xs = [t + (index - (len(modes) - 1) / 2) * width for t in range(len(tasks))]
            values = [results[task][mode]["accuracy"] for task in tasks]
            # Interval bounds can sit a rounding error inside the estimate at 0 or 1.
            low = [max(0.0, v - results[task][mode]["ci_low"]) for task, v in zip(tasks, values, strict=True)]
            high = [max(0.0, results[task][mode]["ci_high"] - v) for task, v in zip(tasks, values, strict=True)]
            ax.bar(xs, values, width, yerr=[low, high], capsize=2, color=_mode_colour(mode), label=mode)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels(tasks)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("exact match (95% CI)")
        ax.set_title("Accuracy by self-conditioning bottleneck")
        ax.legend(fontsize=7, frameon=False, ncol=min(5, len(modes)), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return fig
