"""Monitorability: each monitor and metric on hand-made data with known answers, then the study end to
end on the real-pattern tiny random model and on the bundled model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffinterp as di
from case_studies import monitorability
from diffinterp.phenomena import monitors as M
from diffinterp.stats import auroc

# Hand-made toy-style outputs (token strings): "mon 9 2 7 4" (9 > 4) -> rev, "mon 4 7 2 9" -> keep.
REV, KEEP = ["rev", "4", "7", "2", "9"], ["keep", "4", "7", "2", "9"]


# ------------------------------------------------------------------------------- metrics
def test_auroc_separating_constant_and_inverted():
    labels = [1, 1, 0, 0, 1, 0]
    perfect = [0.9, 0.8, 0.1, 0.2, 0.7, 0.3]
    assert M.auroc_or_none(perfect, labels, resamples=50)["value"] == 1.0
    ci = M.auroc_or_none(perfect, labels, resamples=50)
    assert ci["ci_low"] == ci["ci_high"] == 1.0  # every resample separates perfectly
    assert M.auroc_or_none([0.3] * 6, labels, resamples=50)["value"] == 0.5
    assert M.auroc_or_none([-s for s in perfect], labels, resamples=50)["value"] == 0.0


def test_auroc_or_none_one_class_is_none_not_an_error():
    result = M.auroc_or_none([0.1, 0.2], [1, 1])
    assert result["value"] is None and "both labels" in result["note"]


def test_paired_difference_known_values():
    labels = np.array([1, 1, 1, 0, 0, 0])
    perfect = np.array([3.0, 2.5, 2.0, 1.0, 0.5, 0.0])
    constant = np.zeros(6)
    same = M.paired_auroc_difference(perfect, perfect, labels, resamples=100)
    assert same["value"] == same["ci_low"] == same["ci_high"] == 0.0
    half = M.paired_auroc_difference(perfect, constant, labels, resamples=100)
    assert half["value"] == 0.5 and half["ci_low"] == half["ci_high"] == 0.5
    with pytest.raises(ValueError, match="one score of each kind"):
        M.paired_auroc_difference(perfect, constant[:3], labels)


def test_roc_curve_known_points():
    fpr, tpr = M.roc_curve([0.9, 0.8, 0.4, 0.1], [1, 0, 1, 0])
    # thresholds 0.9, 0.8, 0.4, 0.1: one positive, then a negative, then a positive, then the rest
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc([0.9, 0.8, 0.4, 0.1], [1, 0, 1, 0]))


def test_binary_labels_positive_choice():
    y, positive = M.binary_labels(["keep", "rev", "rev"], "rev")
    assert y.tolist() == [0, 1, 1] and positive == "rev"
    y, positive = M.binary_labels(["a", "b", "a"])
    assert y.tolist() == [0, 1, 0] and positive == "b"
    with pytest.raises(ValueError, match="binary"):
        M.binary_labels(["a", "b", "c"])


# ------------------------------------------------------------------------------- monitors
def test_keyword_monitor_known_predictions():
    outputs = [REV, KEEP, ["keep", "rev", "1"], ["1", "2"], []]
    assert M.KeywordMonitor("rev").score(outputs).tolist() == [1.0, 0.0, 0.5, 0.0, 0.0]
    ids = [[54, 4], [55, 4]]  # works on token ids the same way
    assert M.KeywordMonitor(54).score(ids).tolist() == [1.0, 0.0]


def test_token_rule_learns_the_predictive_token_on_any_vocab():
    outputs = [[7, 3, 9], [7, 5], [8, 3, 9], [8, 5, 3]]
    labels = [1, 1, 0, 0]  # token 7 marks the positives (token 8 the negatives; 7 sorts first)
    rule = M.TokenRuleMonitor().fit(outputs, labels)
    assert rule.token == 7 and rule.direction == 1 and rule.train_auroc == 1.0
    assert rule.score([[7], [8], [3]]).tolist() == [1.0, 0.0, 0.0]
    negative = M.TokenRuleMonitor().fit([[3, 1], [3, 2], [4, 1], [4, 2]], [0, 0, 1, 1])
    assert negative.token == 3 and negative.direction == -1  # presence predicts the negative label
    assert negative.score([[3], [4]]).tolist() == [0.0, 1.0]
    assert M.TokenRuleMonitor().fit(outputs, [1, 1, 1, 1]).score(outputs).tolist() == [0.5] * 4


def test_logistic_monitor_separates_rule_word_and_features_are_counts():
    outputs = [REV, KEEP, ["rev", "1", "3"], ["keep", "3", "1"], ["rev", "5"], ["keep", "5"]]
    labels = [1, 0, 1, 0, 1, 0]
    monitor = M.LogisticMonitor(positions=2).fit(outputs, labels)
    scores = monitor.score([["rev", "8"], ["keep", "8"]])
    assert scores[0] > 0 > scores[1]
    assert auroc(monitor.score(outputs), labels) == 1.0
    x = monitor.features([["rev", "rev", "unseen"]])
    v = len(monitor.vocabulary)
    rev = monitor.vocabulary["rev"]
    assert x.shape == (1, 3 * v) and x[0, rev] == 2.0  # count; the unseen token adds nothing
    assert x[0, v + rev] == 1.0 and x[0, 2 * v + rev] == 1.0 and x.sum() == 4.0
    names = [name for name, _ in monitor.top_features(2)]
    assert set(names) <= {"rev", "keep", "rev@0", "keep@0"}
    again = M.LogisticMonitor(positions=2).fit(outputs, labels)  # deterministic fit
    assert torch.equal(again.weight, monitor.weight)


def test_hidden_rule_word_leaves_digits_at_chance_and_order_rule_uses_prompt():
    # For both rules the visible digits start below where they end: without the rule word and the
    # prompt, rev and keep outputs are the same sequences.
    prompts = [["mon", "4", "7", "2", "9"], ["mon", "9", "2", "7", "4"]]
    outputs = [KEEP, REV]  # both outputs' digits read 4 7 2 9
    hidden = M.hide_tokens(outputs, ["rev", "keep"])
    assert hidden[0] == hidden[1] == ["4", "7", "2", "9"]
    rule = M.TokenRuleMonitor().fit(hidden, [0, 1])
    assert auroc(rule.score(hidden), [0, 1]) == 0.5
    order = M.OrderMonitor(frozenset({"mon", "rev", "keep"}))
    assert order.score(outputs, prompts).tolist() == [0.0, 1.0]
    assert order.score([["1", "2"]], [["mon", "3", "4"]]).tolist() == [0.5]  # neither order


def test_carry_forward_and_draft_outputs():
    drafts = torch.tensor([[[5, 1, 0], [6, 7, 1]], [[5, 6, 1], [9, 9, 9]], [[8, 8, 1], [9, 9, 9]]])
    active = torch.tensor([[True, True], [True, False], [True, False]])
    out = M.carry_forward(drafts, active, n_steps=4)
    assert out.shape == (4, 2, 3)
    assert out[:, 1].tolist() == [[6, 7, 1]] * 4  # row 1 stopped after step 0: keeps that draft
    assert out[3, 0].tolist() == [8, 8, 1]  # step past the end repeats the last step
    assert M.draft_outputs(out, eos_id=1, pad_id=0)[1] == [[5, 6], [6, 7]]
    with pytest.raises(ValueError, match="active"):
        M.carry_forward(drafts, active[:, :1])


# ------------------------------------------------------------------------------- the study
def _check_metrics(out, metrics):
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(metrics["summary"]))
    for name in saved["figures"]:
        assert (out / name).is_file()
    for per in saved["auroc"].values():
        for ci in per.values():
            assert ci["value"] is None or ci["ci_low"] - 1e-9 <= ci["value"] <= ci["ci_high"] + 1e-9 <= 1 + 1e-9
    return saved


def test_run_on_real_pattern_tiny_random_model(tmp_path):
    hm = di.HookedDiffusionGemma(di.tiny_model(di.real_pattern_tiny_config()))
    metrics = monitorability.run(hm, n=3, n_train=6, out_dir=tmp_path, max_denoising_steps=3, resamples=20)
    saved = _check_metrics(tmp_path, metrics)
    assert saved["n"] == 3 and saved["summary"]["accuracy_ar"] is None
    assert any("AR" in note for note in saved["notes"]) and "AR twin" not in saved["auroc"]
    assert set(saved["auroc"]["diffusion final"]) == {"learned token rule", "logistic (bag)", "logistic (bag+position)"}
    assert len(saved["auroc_per_draft_step"]["logistic (bag)"]) == saved["summary"]["draft_steps"] <= 3
    assert "auroc_by_source.png" in saved["figures"]


def test_quick_run_on_bundled_model_recomputes(tmp_path):
    from diffinterp.studies.prompts import prompt_set
    from diffinterp.studies.runs import run_prompt_set

    hm = di.load_model("toy4")
    metrics = monitorability.run(hm, n=24, n_train=40, out_dir=tmp_path, resamples=50)
    saved = _check_metrics(tmp_path, metrics)
    ps = prompt_set(hm, "mon", 24)
    y, _ = M.binary_labels(ps.labels, "rev")
    # Recompute the keyword rule's AUROC from the model's own final outputs.
    preds = [batch.predictions for batch in run_prompt_set(hm, ps, seed=0)][0]
    keyword = M.KeywordMonitor("rev").score([p.split() for p in preds])
    assert saved["auroc"]["diffusion final"]["keyword rule (rev)"]["value"] == pytest.approx(auroc(keyword, y))
    accuracy = saved["accuracy"]["diffusion"]
    assert 0 <= accuracy["value"] <= 1 and accuracy["n"] == 24
    assert saved["summary"]["accuracy_ar"] is not None and "AR twin" in saved["auroc"]
    diff = saved["auroc_difference_diffusion_minus_ar"]["logistic (bag+position)"]
    expected = saved["auroc"]["diffusion final"]["logistic (bag+position)"]["value"]
    assert diff["value"] == pytest.approx(expected - saved["auroc"]["AR twin"]["logistic (bag+position)"]["value"])
    assert len(saved["auroc_per_draft_step"]["keyword rule (rev)"]) == saved["summary"]["draft_steps"] >= 1
    assert {"auroc_by_source.png", "auroc_per_step.png", "roc_curves.png"} <= set(saved["figures"])
