"""Figures of SAEs over denoising time: training curves, reconstruction and splicing per step,
commit steps of features beside their tokens, and the steering comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from diffinterp.figures.style import DIVERGING_CMAP, OKABE_ITO, STYLE, integer_ticks


def training_curves(curves: Mapping[str, Sequence[dict]], title: str = "SAE training"):
    """Loss and explained variance against training step, one line per SAE (``{label: curve}``)."""
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, (loss_ax, ev_ax) = plt.subplots(1, 2, figsize=(7.0, 2.8), layout="constrained")
        for i, (label, curve) in enumerate(curves.items()):
            steps = [point["step"] for point in curve]
            colour = OKABE_ITO[i % len(OKABE_ITO)]
            loss_ax.plot(steps, [point["mse"] for point in curve], color=colour, label=label)
            ev_ax.plot(steps, [point["explained_variance"] for point in curve], color=colour, label=label)
        loss_ax.set_yscale("log")
        loss_ax.set_xlabel("training step")
        loss_ax.set_ylabel("reconstruction MSE (batch)")
        ev_ax.set_xlabel("training step")
        ev_ax.set_ylabel("explained variance (batch)")
        ev_ax.set_ylim(min(0.0, ev_ax.get_ylim()[0]), 1.0)
        ev_ax.legend(fontsize=7, frameon=False)
        fig.suptitle(title, fontsize=10)
    return fig


def splice_heatmap(delta_ce: Sequence[Sequence[float]], layers: Sequence[int], steps: Sequence[int], title: str):
    """Change in cross-entropy when the SAE replaces the layer at one step (``[layer][step]``)."""
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array(delta_ce, dtype=float)
    bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(
            figsize=(min(1.2 + 0.35 * len(steps), 9.0), 0.9 + 0.4 * len(layers)), layout="constrained"
        )
        image = ax.imshow(values, cmap=DIVERGING_CMAP, vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(len(steps)), [str(s) for s in steps])
        ax.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
        ax.set_xlabel("spliced step")
        fig.colorbar(image, ax=ax, label="ΔCE (spliced − clean), nats")
        ax.set_title(title, fontsize=9)
    return fig


def commit_by_position(positions: Sequence[int], feature: Sequence[dict], token: Sequence[dict], title: str):
    """Mean commit step of a feature and settle step of its token at each canvas position (95% CI)."""
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.4, 3.0), layout="constrained")
        for offset, (label, stats, colour) in enumerate(
            (("SAE feature commits", feature, OKABE_ITO[3]), ("argmax token settles", token, OKABE_ITO[0]))
        ):
            xs = [p + (offset - 0.5) * 0.18 for p, s in zip(positions, stats, strict=True) if s["value"] is not None]
            kept = [s for s in stats if s["value"] is not None]
            values = [s["value"] for s in kept]
            err = [[max(0.0, v - s["ci_low"]) for v, s in zip(values, kept, strict=True)],
                   [max(0.0, s["ci_high"] - v) for v, s in zip(values, kept, strict=True)]]  # fmt: skip
            ax.errorbar(
                xs, values, yerr=err, marker="o", markersize=3, capsize=2, linestyle="-", color=colour, label=label
            )
        integer_ticks(ax, x=True)
        ax.set_xlabel("canvas position (answer digit)")
        ax.set_ylabel("step (mean, 95% CI)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    return fig


def steering_comparison(rows: Sequence[dict], title: str):
    """Effect (target reached) against damage (a digit that does not depend on it changed) per strength, one line per
    schedule; ``rows``: ``{"schedule", "strength", "effect": proportion, "damage": proportion}``."""
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 3.4), layout="constrained")
        schedules = list(dict.fromkeys(row["schedule"] for row in rows))
        for i, schedule in enumerate(schedules):
            mine = [row for row in rows if row["schedule"] == schedule]
            ax.plot([r["damage"]["value"] for r in mine], [r["effect"]["value"] for r in mine], marker="o",
                    color=OKABE_ITO[i % len(OKABE_ITO)], label=schedule)  # fmt: skip
            for r in mine:
                ax.annotate(f"{r['strength']:g}", (r["damage"]["value"], r["effect"]["value"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("damage: rows with a digit right of it changed")
        ax.set_ylabel("effect: rows whose target digit became the feature's")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, frameon=False, title="schedule (labels: strength)", title_fontsize=7)
    return fig
