"""The case studies' shared machinery: statistics, prompt sets, batched runs, output folders."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import diffinterp as di
from diffinterp import stats, studies
from diffinterp.core.configs import real_pattern_tiny_config


# ------------------------------------------------------------------------------- statistics
def _auroc_by_pairs(scores, labels) -> float:
    """The definition: over all (positive, negative) pairs, 1 if the positive scores higher, 1/2 on ties."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.integers(0, 2, 40)
    assert stats.auroc(scores, labels) == pytest.approx(_auroc_by_pairs(scores, labels))


def test_auroc_extremes_and_errors():
    assert stats.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert stats.auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert stats.auroc([3, 3, 3, 3], [0, 1, 0, 1]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        stats.auroc([1, 2], [1, 1])
    with pytest.raises(ValueError, match="0/1"):
        stats.auroc([1, 2], [0, 2])
    result = stats.auroc_ci([0.1, 0.2, 0.8, 0.9] * 5, [0, 0, 1, 1] * 5)
    assert result["value"] == result["ci_low"] == result["ci_high"] == 1.0


def test_wilson_interval_matches_the_formula_and_brackets_the_rate():
    low, high = stats.wilson_interval(7, 10)
    # hand computation: p=.7, z=1.959964, centre=(p+z²/2n)/(1+z²/n), half=z·sqrt(p(1-p)/n+z²/4n²)/(1+z²/n)
    z, n, p = 1.959964, 10, 0.7
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert stats.wilson_interval(0, 5)[0] == 0.0 and stats.wilson_interval(5, 5)[1] == 1.0
    assert stats.proportion(0, 0)["value"] is None
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(6, 5)


def test_mean_ci_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(0).normal(3.0, 1.0, 200)
    a, b = stats.mean_ci(values, seed=1), stats.mean_ci(values, seed=1)
    assert a == b
    assert a["value"] == pytest.approx(values.mean())
    assert a["ci_low"] < a["value"] < a["ci_high"]
    assert stats.mean_ci([])["value"] is None


# ------------------------------------------------------------------------------- prompt sets
def test_random_prompt_set_is_seeded_left_padded_and_labelled():
    a = studies.random_prompt_set(50, 6, seed=3)
    b = studies.random_prompt_set(50, 6, seed=3)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert not torch.equal(a.input_ids, studies.random_prompt_set(50, 6, seed=4).input_ids)
    for ids, mask, label in zip(a.input_ids, a.attention_mask, a.labels, strict=True):
        length = int(mask.sum())
        assert mask[-length:].all() and not mask[:-length].any()  # left padding
        first = int(ids[-length])
        assert 4 <= first < 50 and label == ("a" if first % 2 == 0 else "b")
    with pytest.raises(ValueError, match="vocab_size"):
        studies.random_prompt_set(4, 2)


def test_prompt_set_validation_and_subset():
    ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="one per prompt"):
        studies.PromptSet("x", ids, mask, answers=["a"])
    with pytest.raises(ValueError, match="must match"):
        studies.PromptSet("x", ids, mask[:, :2])
    ps = studies.PromptSet("x", ids, mask, labels=["p", "q"])
    sub = ps.subset([0])
    assert sub.input_ids.tolist() == [[5, 6]] and sub.labels == ["p"]  # shared padding column dropped


def test_real_pattern_tiny_config_has_the_real_layer_pattern():
    config = real_pattern_tiny_config()
    assert list(config.text_config.layer_types) == list(di.real_config().text_config.layer_types)
    assert config.text_config.vocab_size == 200


# ------------------------------------------------------------------------------- runs
def test_run_prompt_set_matches_eval_accuracy_and_plain_generate():
    """Chunks are seeded like ``diffinterp eval``; each chunk equals a plain seeded generate."""
    from diffinterp.organisms.evaluate import evaluate_task

    hm = di.load_model("toy4")
    ps = studies.prompt_set(hm, "seq", 12)
    batches = list(studies.run_prompt_set(hm, ps, batch_size=5))
    assert [b.rows for b in batches] == [list(range(0, 5)), list(range(5, 10)), [10, 11]]
    correct = torch.cat([b.correct for b in batches])
    reference = evaluate_task(hm, "seq", n=12, batch_size=5)
    assert correct.float().mean().item() == pytest.approx(reference["accuracy"])
    torch.manual_seed(batches[1].seed)
    again = hm.generate(batches[1].prompts.input_ids, attention_mask=batches[1].prompts.attention_mask)
    assert torch.equal(again.sequences, batches[1].trajectory.sequences)


def test_rerun_kwargs_replay_the_same_draws():
    hm = di.load_model("toy4")
    ps = studies.prompt_set(hm, "arith", 3)
    (batch,) = studies.run_prompt_set(hm, ps, seed=11)
    torch.manual_seed(999)  # a different global state: the replay must not depend on it
    again = hm.generate(batch.trajectory.prompt_ids, **studies.rerun_kwargs(batch))
    assert torch.equal(again.sequences, batch.trajectory.sequences)


def test_run_prompt_set_on_a_model_without_tokenizer_generates_one_canvas():
    torch.manual_seed(0)
    hm = di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(vocab_size=80, canvas_length=6)))
    ps = studies.prompt_set(hm, "arith", 3)
    assert ps.task == studies.RANDOM_TASK and ps.answers is None
    (batch,) = studies.run_prompt_set(hm, ps, names_filter="decoder.hook_logits", max_denoising_steps=3)
    assert batch.correct is None
    assert batch.trajectory.sequences.shape[1] == ps.input_ids.shape[1] + 6
    assert all(p.startswith("<") or p == "" for p in batch.predictions)
    assert ("decoder.hook_logits", 0, 0) in batch.cache


# ------------------------------------------------------------------------------- output
def test_study_output_writes_metrics_atomically_and_not_on_error(tmp_path):
    import matplotlib.pyplot as plt

    with studies.StudyOutput(tmp_path / "ok") as out:
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        out.figure(fig, "line")
        out.metrics["summary"] = {"x": torch.tensor(0.5)}
    data = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert data == {"summary": {"x": 0.5}, "figures": ["line.png"]}
    assert (tmp_path / "ok" / "line.svg").is_file()
    with pytest.raises(RuntimeError), studies.StudyOutput(tmp_path / "bad") as out:
        out.metrics["summary"] = {"x": 1}
        raise RuntimeError("boom")
    assert not (tmp_path / "bad" / "metrics.json").exists()
    assert not list((tmp_path / "bad").glob("*.tmp"))
