"""Figures of a trajectory: the canvas as tokens x steps, and per-position entropy."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffinterp.figures.style import SEQUENTIAL_CMAP, STYLE, integer_ticks  # noqa: E402
from diffinterp.records.decoding import token_labels  # noqa: E402
from diffinterp.records.trajectory import Trajectory  # noqa: E402


def _fontsize(label: str) -> float:
    """Small enough that a whole token fits its cell (cells are about 0.55 inch wide)."""
    return 6 if len(label) <= 5 else max(3.5, 6 * 5 / len(label))


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
                ax.text(
                    pos,
                    step,
                    labels[pos],
                    ha="center",
                    va="center",
                    fontsize=_fontsize(labels[pos]),
                    color=colour,
                    weight=weight,
                )
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
        integer_ticks(ax, x=True, y=True)
        ax.set_title(f"Entropy per position and step, block {block}, row {row}")
        fig.colorbar(image, ax=ax, label="entropy (nats)", fraction=0.03)
    return fig
