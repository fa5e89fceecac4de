"""Figures of token and sequence smearing: rates, rates per step, shifts, an example canvas."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from diffinterp.figures.style import SEQUENTIAL_CMAP, STYLE, drawn_legend  # noqa: E402
from diffinterp.records.decoding import token_labels  # noqa: E402

#: Okabe-Ito, in the order the smearing figures have always used
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _err(values: list[dict]) -> list[list[float]]:
    centre = [v["value"] or 0.0 for v in values]
    return [
        [max(0.0, c - v["ci_low"]) for c, v in zip(centre, values, strict=True)],
        [max(0.0, v["ci_high"] - c) for c, v in zip(centre, values, strict=True)],
    ]


def _legend_or_note(ax, note: str, **kwargs) -> None:
    """A legend, or ``note`` in the middle of an empty plot (so an empty figure says why)."""
    if drawn_legend(ax, fontsize=7, frameon=False, **kwargs) is None:
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="#666666")


def rate_bars(rates: dict[str, dict[str, dict]], title: str = "Samples with at least one smear"):
    """Grouped bars with 95% CIs: ``rates[task][kind]`` is a :func:`stats.proportion` dict."""
    tasks = list(rates)
    kinds = list(next(iter(rates.values()))) if tasks else []
    width = 0.8 / max(1, len(kinds))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(tasks) + 2), 3.4))
        for i, kind in enumerate(kinds):
            values = [rates[t][kind] for t in tasks]
            xs = [t + (i - (len(kinds) - 1) / 2) * width for t in range(len(tasks))]
            heights = [v["value"] or 0.0 for v in values]
            ax.bar(xs, heights, width, yerr=_err(values), capsize=2, color=OKABE_ITO[i % 8], label=kind)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels(tasks)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction (95% CI)")
        ax.set_title(title)
        legend = dict(fontsize=7, frameon=False, ncol=min(5, max(1, len(kinds))), loc="upper center")
        drawn_legend(ax, bbox_to_anchor=(0.5, -0.1), **legend)
    return fig


def rate_per_step(
    curves: dict[str, dict],
    xlabel: str = "denoising step",
    title: str = "Canvases with a smear",
    min_n: int = 10,
):
    """Lines with 95% bands: ``curves[label][x]`` is a :func:`stats.proportion` dict; points over
    fewer than ``min_n`` canvases are left out (their intervals span most of [0, 1])."""
    from matplotlib.ticker import MaxNLocator

    top = 0.05
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        labels = sorted({x for curve in curves.values() for x in curve if isinstance(x, str)})
        categorical = bool(labels)
        for i, (label, curve) in enumerate(curves.items()):
            xs = [x for x in curve if curve[x]["n"] >= min_n]
            if not xs:
                continue
            positions = [labels.index(x) for x in xs] if categorical else [int(x) for x in xs]
            values = [curve[x]["value"] for x in xs]
            lows, highs = [curve[x]["ci_low"] for x in xs], [curve[x]["ci_high"] for x in xs]
            colour = OKABE_ITO[i % 8]
            ax.plot(positions, values, "o-", color=colour, label=label, markersize=3, linewidth=1.2)
            ax.fill_between(positions, lows, highs, color=colour, alpha=0.15, linewidth=0)
            top = max(top, *highs)
        if categorical:
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, min(1.05, 1.1 * top))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"fraction of intermediate canvases (95% CI; n >= {min_n})")
        ax.set_title(title)
        _legend_or_note(ax, f"no point over >= {min_n} canvases", ncol=2)
    return fig


def shift_histogram(shifts: dict[str, list[int]], max_shift: int = 3):
    """Counts of sequence-smear shifts ``k`` per task (stacked bars)."""
    ks = [k for k in range(-max_shift, max_shift + 1) if k != 0]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.0, 3.2))
        bottom = [0] * len(ks)
        for i, (task, values) in enumerate(shifts.items()):
            counts = [values.count(k) for k in ks]
            ax.bar(ks, counts, 0.7, bottom=bottom, color=OKABE_ITO[i % 8], label=task)
            bottom = [a + b for a, b in zip(bottom, counts, strict=True)]
        ax.set_xticks(ks)
        ax.set_xlabel("shift k (canvas[p] == reference[p + k])")
        ax.set_ylabel("sequence-smear events")
        ax.set_title("Shifts of sequence smears" + ("" if sum(bottom) else " (none found)"))
        if shifts:
            drawn_legend(ax, fontsize=7, frameon=False)
    return fig


def displacement_profile(profiles: dict[str, dict], min_n: int = 5):
    """Fraction of wrong tokens equal to the final token ``d`` away, with 95% CIs, per task:
    ``profiles[task][d]`` is a :func:`stats.proportion` dict (points over fewer than ``min_n`` are left out)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for i, (task, profile) in enumerate(profiles.items()):
            points = sorted((int(d), v) for d, v in profile.items() if v["n"] >= min_n)
            if not points:
                continue
            ds, values = [d for d, _ in points], [v for _, v in points]
            heights, colour = [v["value"] or 0.0 for v in values], OKABE_ITO[i % 8]
            ax.errorbar(ds, heights, yerr=_err(values), fmt="o-", color=colour, label=task, markersize=3, capsize=2)
        ax.axvline(0, color="#999999", linewidth=0.8, linestyle=":")
        ax.set_xlabel("distance d (wrong token == final[i + d])")
        ax.set_ylabel("fraction of wrong tokens (95% CI)")
        ax.set_title("Where wrong intermediate tokens come from")
        _legend_or_note(ax, f"fewer than {min_n} wrong tokens at every distance")
    return fig


def smear_evolution(trajectory, row: int, block: int = 0, tokenizer=None, events: Sequence = (), title: str = ""):
    """Argmax canvas per step (plus the final canvas as the last line), coloured by entropy, with the
    positions of ``events`` (token / sequence smears of this row and block) outlined in orange."""
    from matplotlib.patches import Rectangle

    tokens = trajectory.stack("argmax", block)[:, row].cpu()
    active = trajectory.stack("active", block)[:, row].cpu().bool()
    n_steps = int(active.sum()) if active.any() else tokens.shape[0]
    tokens = torch.cat([tokens[:n_steps], trajectory.blocks[block].final_canvas[row].cpu()[None]])
    entropy = trajectory.stack("entropy", block)[:n_steps, row].float().cpu()
    entropy = torch.cat([entropy, torch.zeros(1, entropy.shape[1])]).numpy()
    n_rows, n_pos = tokens.shape
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * n_pos + 1.5), max(2.5, 0.34 * n_rows + 1.2)))
        image = ax.imshow(entropy, cmap=SEQUENTIAL_CMAP, aspect="auto", vmin=0)
        top = max(float(entropy.max()), 1e-9)
        for s in range(n_rows):
            for pos, label in enumerate(token_labels(tokens[s], tokenizer)):
                colour = "black" if entropy[s, pos] > 0.6 * top else "white"
                ax.text(
                    pos,
                    s,
                    label,
                    ha="center",
                    va="center",
                    fontsize=6 if len(label) <= 5 else max(3.5, 30 / len(label)),
                    color=colour,
                )
        for event in events:
            if event.row == row and event.block == block and event.step < n_steps:
                for pos in event.positions:
                    ax.add_patch(Rectangle((pos - 0.5, event.step - 0.5), 1, 1, fill=False, ec="#E69F00", lw=2))
        ax.set_xticks(range(n_pos))
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels([*map(str, range(n_steps)), "final"])
        ax.set_xlabel("canvas position")
        ax.set_ylabel("denoising step (argmax canvas)")
        ax.set_title(title or f"Canvas evolution, row {row}, block {block} (orange: smear)")
        fig.colorbar(image, ax=ax, label="entropy (nats)", fraction=0.03)
    return fig


__all__ = [
    "displacement_profile",
    "rate_bars",
    "rate_per_step",
    "shift_histogram",
    "smear_evolution",
]
