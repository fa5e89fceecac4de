"""Figures read well: whole-number step ticks, whole token labels, a legend entry only for what is drawn.

Checked on a 3-step run of the bundled ``carry`` organism (matplotlib's own ticks for three rows
are 0.5 apart), on a tiny model with a 200k vocabulary and no tokenizer (its ``#123456`` labels
are longer than the old five- and six-character cuts), and on hand-made results with a missing
series.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import diffinterp as di  # noqa: E402
from diffinterp.figures import canvas, monitors  # noqa: E402
from diffinterp.figures import instruments as ip  # noqa: E402
from diffinterp.figures.style import drawn_legend, integer_ticks, wrap_label  # noqa: E402


@pytest.fixture(scope="module")
def run():
    hm = di.load_model("carry")
    ids, mask = hm.to_tokens(["carry 1 9 9 8 7 7 2 5 1 3"])
    torch.manual_seed(0)
    return hm, hm.generate(ids, attention_mask=mask, max_denoising_steps=3, stability_threshold=4)


@pytest.fixture(scope="module")
def big_vocab_run():
    config = di.tiny_config(vocab_size=200_000, hidden_size=32, intermediate_size=32, moe_intermediate_size=16)
    hm = di.HookedDiffusionGemma(di.tiny_model(config, seed=0))
    ids = torch.randint(100_000, 200_000, (1, 5), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    return hm.generate(ids, max_denoising_steps=3, stability_threshold=4)


def _tick_numbers(labels) -> list[float]:
    return [float(t.get_text().replace("\u2212", "-")) for t in labels if t.get_text()]


def test_step_axes_have_whole_number_ticks(run):
    hm, traj = run
    for fig, axis in (
        (canvas.entropy_heatmap(traj), "y"),
        (ip.commit_order(traj, tokenizer=hm.tokenizer), "y"),
    ):
        ax = fig.axes[0]
        fig.canvas.draw()
        ticks = _tick_numbers(ax.get_yticklabels() if axis == "y" else ax.get_xticklabels())
        assert ticks and all(t == int(t) for t in ticks), ticks
        plt.close(fig)


def test_token_labels_are_whole(run, big_vocab_run):
    hm, traj = run
    fig = canvas.canvas_evolution(traj, tokenizer=hm.tokenizer)
    assert {"<eos>", "<pad>"} <= {t.get_text() for t in fig.axes[0].texts}
    traj = big_vocab_run
    final = traj.stack("argmax")[-1, 0].tolist()
    assert sum(len(f"#{t}") >= 7 for t in final) >= 2  # labels longer than the old cuts
    fig = canvas.canvas_evolution(traj)
    assert {f"#{t}" for t in final} <= {t.get_text() for t in fig.axes[0].texts}
    fig = ip.commit_order(traj)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [f"{p}\n#{t}" for p, t in enumerate(final)]
    plt.close("all")


def test_a_legend_lists_only_what_is_drawn():
    fig, ax = plt.subplots()
    ax.bar([0, 1], [0.5, 0.7], label="drawn")
    ax.bar([0, 1], [np.nan, np.nan], label="nothing to draw")
    ax.plot([0, 1], [np.nan, np.nan], label="empty line")
    ax.axhline(0.5, label="chance")
    legend = drawn_legend(ax)
    assert sorted(t.get_text() for t in legend.get_texts()) == ["chance", "drawn"]
    fig2, ax2 = plt.subplots()
    ax2.bar([0], [np.nan], label="nothing")
    assert drawn_legend(ax2) is None
    results = {"outputs": {"keyword": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}}, "drafts": {"keyword": {}}}
    fig3 = monitors.auroc_bars(results)
    entries = [t.get_text() for t in fig3.axes[0].get_legend().get_texts()]
    assert "outputs" in entries and "drafts" not in entries
    plt.close("all")


def test_helpers():
    assert wrap_label("self_conditioning") == "self_\nconditioning"
    assert wrap_label("tokens") == "tokens"
    assert "\n" not in wrap_label("accepted tokens", 20)
    fig, ax = plt.subplots()
    ax.plot([0, 2.5], [0, 7.5])
    integer_ticks(ax, x=True, y=True)
    fig.canvas.draw()
    assert all(t == int(t) for t in _tick_numbers(ax.get_xticklabels()) + _tick_numbers(ax.get_yticklabels()))
    plt.close("all")
