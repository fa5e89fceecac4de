"""Figures for the instruments (logit lens, patching, path patching, attribution, probes, commit order).

Each function takes records (results of :mod:`~diffinterp.instruments.lens`,
:mod:`~diffinterp.instruments.patching`, :mod:`~diffinterp.instruments.probes`, or a trajectory)
and returns a matplotlib Figure in the package's one style (:mod:`~diffinterp.figures.style`);
save with :func:`~diffinterp.records.files.save_figure` (PNG + SVG). Canvas evolution and entropy
heatmaps are in :mod:`~diffinterp.figures.canvas`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from diffinterp.figures.style import (  # noqa: E402
    DIVERGING_CMAP,
    OKABE_ITO,
    SEQUENTIAL_CMAP,
    STYLE,
    drawn_legend,
    integer_ticks,
    wrap_label,
)
from diffinterp.instruments.lens import settle_steps
from diffinterp.instruments.patching import correlation
from diffinterp.records.decoding import attention_keys, token_labels  # noqa: E402


def _diverging_norm(values: np.ndarray) -> TwoSlopeNorm:
    finite = values[np.isfinite(values)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    bound = bound or 1.0
    return TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)


def _size(n_cols: int, n_rows: int, cell: float = 0.42, min_w: float = 3.6, min_h: float = 2.6, max_side: float = 6.5):
    """Figure size for a grid: ``cell`` inches per cell, each side capped at ``max_side`` inches of cells."""
    return max(min_w, min(cell * n_cols, max_side) + 1.8), max(min_h, min(cell * n_rows, max_side) + 1.2)


def logit_lens_grid(lens, targets: torch.Tensor, *, row: int = 0, positions=None, tokenizer=None, max_panels: int = 16):
    """Probability of each position's final token under the logit lens: one step × layer panel per position.

    ``lens``: a :class:`~diffinterp.instruments.lens.LogitLens`; ``targets``: ``[batch, pos]`` final tokens.
    """
    probs = lens.prob_of(targets)[:, :, row].float().cpu().numpy()  # [S, L, P]
    n_pos = probs.shape[-1]
    positions = list(range(min(n_pos, max_panels))) if positions is None else list(positions)
    labels = token_labels(targets[row].tolist(), tokenizer)
    cols = min(4, len(positions))
    rows = int(np.ceil(len(positions) / cols))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(2.3 * cols + 1.0, 2.0 * rows + 0.6),
            squeeze=False,
            sharex=True,
            sharey=True,
            layout="constrained",
        )
        image = None
        for index, ax in enumerate(axes.flat):
            if index >= len(positions):
                ax.axis("off")
                continue
            pos = positions[index]
            image = ax.imshow(probs[:, :, pos], cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1, aspect="auto", origin="upper")
            ax.set_title(f"pos {pos}: {labels[pos]}", fontsize=8)
            ax.set_xticks(range(len(lens.layers)))
            ax.set_xticklabels(lens.layers, fontsize=6)
            integer_ticks(ax, y=True)
            if index % cols == 0:
                ax.set_ylabel("step")
            if index // cols == rows - 1:
                ax.set_xlabel("layer")
        fig.suptitle(f"Logit lens: P(final token), block {lens.block}, row {row}", fontsize=10)
        fig.colorbar(image, ax=axes, label="probability", fraction=0.025)
    return fig


def patching_heatmap(result, *, normalised: bool = True, row: int | None = None, title: str | None = None):
    """A 2-D patching sweep (:class:`~diffinterp.instruments.patching.PatchingResult`): mean over prompts (or one ``row``).

    ``normalised``: ``(patched - corrupt) / (clean - corrupt)`` of the prompt means (0 = no effect,
    1 = clean restored), or of ``row``'s values.
    """
    if row is not None:
        values = (result.normalised() if normalised else result.values)[..., row]
    else:
        values = result.mean(normalised)
    values = values.float().cpu().numpy()
    if values.ndim != 2:
        raise ValueError(f"patching_heatmap draws 2-D sweeps; this result has axes {list(result.axes)}")
    (y_name, y_labels), (x_name, x_labels) = list(result.axes.items())
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=_size(len(x_labels), len(y_labels)), layout="constrained")
        if not normalised and np.nanmin(values) >= 0:  # e.g. exact match or probabilities: a magnitude
            image = ax.imshow(
                values, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=max(1.0, float(np.nanmax(values))), aspect="auto"
            )
        else:
            image = ax.imshow(values, cmap=DIVERGING_CMAP, norm=_diverging_norm(values), aspect="auto")
        ax.set_xticks(range(len(x_labels)))
        ax.set_xticklabels([wrap_label(x) for x in x_labels] if x_name == "channel" else x_labels)
        ax.set_yticks(range(len(y_labels)))
        ax.set_yticklabels(y_labels)
        ax.set_xlabel(x_name)
        ax.set_ylabel(y_name)
        label = "fraction of clean-corrupt gap restored" if normalised else result.metric
        hook = result.hook.replace("decoder.blocks.{layer}.", "").replace("decoder.", "")
        ax.set_title(title or f"Patching {hook}\n({result.mode} mode, block {result.block})", fontsize=9)
        fig.colorbar(image, ax=ax, label=label, fraction=0.04)
    return fig


def path_patching_plot(result, *, normalised: bool = True, title: str | None = None):
    """Cross-step path patching: effect of each channel at each step boundary s -> s+1 (mean over prompts)."""
    values = result.mean(normalised).float().cpu().numpy()
    channels, steps = result.axes["channel"], result.axes["step"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(min(9.0, max(4.5, 0.35 * len(steps) + 2.5)), 3.2), layout="constrained")
        markers = "osD^vP*"
        for index, channel in enumerate(channels):
            ax.plot(steps, values[index], marker=markers[index % len(markers)], markersize=3.5,
                    color=OKABE_ITO[index % len(OKABE_ITO)], label=channel.replace("_", " "), linewidth=1.4)  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.6)
        integer_ticks(ax, x=True)
        ax.set_xlabel("step boundary s → s+1")
        ax.set_ylabel("fraction of gap restored" if normalised else result.metric)
        ax.set_title(title or f"Path patching through step inputs ({result.mode}), block {result.block}")
        drawn_legend(ax, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def commit_order(trajectory, *, block: int = 0, row: int = 0, tokenizer=None, first=None):
    """The step at which each canvas position settles on its final token (dots), in canvas order.

    ``first`` (a :class:`~diffinterp.instruments.lens.FirstPrediction`) adds the step at which the logit lens
    first predicts that token (markers).
    """

    settle = settle_steps(trajectory, block)[row].cpu().numpy()
    final = trajectory.stack("argmax", block)[-1, row].tolist()
    labels = token_labels(final, tokenizer)
    n_pos = len(settle)
    n_steps = trajectory.block(block).n_steps
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.5, 0.4 * n_pos + 1.5), 3.2), layout="constrained")
        ax.vlines(range(n_pos), -0.5, settle, color=OKABE_ITO[3], alpha=0.35, linewidth=3)
        ax.scatter(range(n_pos), settle, color=OKABE_ITO[3], zorder=3, s=22, label="argmax settles")
        if first is not None:
            lens_step = first.step[row].cpu().numpy()
            ax.scatter(range(n_pos), np.where(lens_step >= 0, lens_step, np.nan), color=OKABE_ITO[4], zorder=4,
                       marker="D", s=14, label="lens first predicts it")  # fmt: skip
        drawn_legend(ax, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_ylim(-0.5, n_steps - 0.5)
        ax.set_xticks(range(n_pos))
        ax.set_xticklabels([f"{p}\n{lab}" for p, lab in enumerate(labels)], fontsize=6)
        integer_ticks(ax, y=True)
        ax.set_xlabel("canvas position (final token)")
        ax.set_ylabel("step")
        ax.set_title(f"Commit order, block {block}, row {row} ({n_steps} steps)")
    return fig


def probe_heatmap(result, *, title: str | None = None):
    """Held-out probe accuracy per (step, layer), beside the control's (shuffled labels or control task)."""
    acc = result.accuracy.float().cpu().numpy()
    control = result.control.float().cpu().numpy()
    with plt.rc_context(STYLE):
        w, h = _size(len(result.layers), len(result.steps))
        fig, axes = plt.subplots(1, 2, figsize=(2 * w, h), sharey=True, layout="constrained")
        for ax, values, name in ((axes[0], acc, "probe"), (axes[1], control, result.control_kind)):
            image = ax.imshow(values, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(result.layers)))
            ax.set_xticklabels(result.layers)
            ax.set_xlabel("layer")
            ax.set_title(f"{name} (held-out)", fontsize=9)
        axes[0].set_yticks(range(len(result.steps)))
        axes[0].set_yticklabels(result.steps)
        axes[0].set_ylabel("step")
        fig.suptitle(
            title or f"Linear probes on {result.hook.format(layer='L')} (majority {result.majority:.2f})", fontsize=10
        )
        fig.colorbar(image, ax=axes, label="accuracy", fraction=0.03)
    return fig


def attribution_scatter(
    estimate: torch.Tensor,
    actual: torch.Tensor,
    *,
    title: str | None = None,
    xlabel: str = "activation patching (chain)",
):
    """Attribution patching estimates against true activation patching, with their correlation."""

    x, y = actual.flatten().float().cpu().numpy(), estimate.flatten().float().cpu().numpy()
    r = correlation(estimate, actual)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.6, 3.4), layout="constrained")
        ax.scatter(x, y, s=8, alpha=0.6, color=OKABE_ITO[3], edgecolors="none")
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.6, linestyle=":")
        ax.set_xlabel(f"{xlabel}: Δ metric")
        ax.set_ylabel("attribution patching: Δ metric")
        ax.set_title(title or f"Attribution vs activation patching (r = {r:.3f})")
    return fig


__all__ = [
    "DIVERGING_CMAP",
    "OKABE_ITO",
    "attribution_scatter",
    "commit_order",
    "logit_lens_grid",
    "patching_heatmap",
    "path_patching_plot",
    "probe_heatmap",
]


def attention_pattern(
    cache, trajectory, *, step: int, layer: int, heads=None, block: int = 0, row: int = 0, tokenizer=None
):
    """The decoder's attention at one (step, layer): one query x key panel per head.

    Rows are canvas positions (queries, labelled with the step's input token); columns are keys in
    the model's order: the cached prefix, then the canvas (:func:`~diffinterp.records.decoding.attention_keys`;
    a sliding-window layer shows only the last ``sliding_window - 1`` prefix tokens). Needs
    ``decoder.blocks.{layer}.attn.hook_pattern`` cached at ``step``; ``heads``: which (default all).
    """
    name = f"decoder.blocks.{layer}.attn.hook_pattern"
    pattern = cache.get(name, step, block)[row].float().cpu().numpy()  # [heads, query, key]
    n_heads, n_query, n_keys = pattern.shape
    heads = list(range(n_heads)) if heads is None else list(heads)
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise IndexError(f"head {bad[0]} out of range: layer {layer} has heads 0..{n_heads - 1}")
    keys = attention_keys(trajectory, block, step, n_keys, row)
    key_labels = [f"{'p' if kind == 'prefix' else 'c'}{pos} {label}" for (kind, pos, _), label in
                  zip(keys, token_labels([t for *_, t in keys], tokenizer), strict=True)]  # fmt: skip
    queries = list(cache.positions) if cache.positions is not None else list(range(n_query))
    canvas_in = trajectory.step(block, step).canvas_in[row].tolist()
    query_labels = [
        f"{q} {label}"
        for q, label in zip(queries, token_labels([canvas_in[q] for q in queries], tokenizer), strict=True)
    ]
    n_prefix = sum(kind == "prefix" for kind, _, _ in keys)
    cols = min(2, len(heads))  # two panels a row keep every key label readable
    rows = int(np.ceil(len(heads) / cols))
    cell = 0.16
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            rows, cols, figsize=(cols * (cell * n_keys + 1.3) + 0.8, rows * (cell * n_query + 1.4) + 0.5),
            squeeze=False, layout="constrained",
        )  # fmt: skip
        image = None
        for index, ax in enumerate(axes.flat):
            if index >= len(heads):
                ax.axis("off")
                continue
            image = ax.imshow(pattern[heads[index]], cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1, aspect="auto")
            ax.axvline(n_prefix - 0.5, color="white", linewidth=0.8)  # prefix | canvas
            ax.set_title(f"head {heads[index]}", fontsize=8)
            ax.set_xticks(range(n_keys))
            ax.set_xticklabels(key_labels, rotation=90, fontsize=6)
            ax.set_yticks(range(n_query))
            ax.set_yticklabels(query_labels if index % cols == 0 else [], fontsize=6)
            if index // cols == rows - 1:
                ax.set_xlabel("key (p = prefix, c = canvas)")
            if index % cols == 0:
                ax.set_ylabel("query (canvas position)")
        fig.suptitle(f"Attention, step {step}, layer {layer}, block {block}, row {row}", fontsize=10)
        fig.colorbar(image, ax=axes, label="attention probability", fraction=0.025)
    return fig
