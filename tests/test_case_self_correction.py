"""The worked-example study (self-correction): its metric by hand and by brute force; end-to-end runs."""

from __future__ import annotations

import json

import pytest
import torch

import diffinterp as di
from case_studies import self_correction
from diffinterp.core.configs import real_pattern_tiny_config


def test_revisions_on_a_hand_made_trajectory():
    # one row, 3 positions, 3 steps; the row stops denoising after step 1
    canvas_out = torch.tensor([[[5, 9, 4]], [[6, 7, 4]], [[8, 7, 3]]])
    accepted = torch.tensor([[[1, 0, 1]], [[1, 1, 1]], [[1, 1, 1]]]).bool()
    active = torch.tensor([[True], [True], [False]])
    found = self_correction.revisions(canvas_out, accepted, active)
    # step 1: position 0 accepted 6 over the 5 it accepted at step 0 (a revision); position 1's first
    # acceptance is not one; position 2 kept 4; step 2 is after the row stopped, so nothing counts.
    assert found.nonzero().tolist() == [[1, 0, 0]]


def _revisions_by_definition(canvas_out, accepted, active):
    steps, batch, positions = canvas_out.shape
    out = torch.zeros_like(accepted)
    for b in range(batch):
        for p in range(positions):
            last = None
            for s in range(steps):
                if active[s, b] and accepted[s, b, p]:
                    token = int(canvas_out[s, b, p])
                    out[s, b, p] = last is not None and token != last
                    last = token
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_revisions_equal_the_definition_on_random_records(seed):
    g = torch.Generator().manual_seed(seed)
    canvas_out = torch.randint(0, 3, (6, 4, 5), generator=g)
    accepted = torch.rand(6, 4, 5, generator=g) < 0.6
    active = torch.rand(6, 4, generator=g) < 0.8
    expected = _revisions_by_definition(canvas_out, accepted, active)
    assert torch.equal(self_correction.revisions(canvas_out, accepted, active), expected)
    with pytest.raises(ValueError, match=r"\[S, B\]"):
        self_correction.revisions(canvas_out, accepted, active[:, :2])


def test_runs_on_a_real_pattern_tiny_random_model(tmp_path):
    hm = di.HookedDiffusionGemma(di.tiny_model(real_pattern_tiny_config()))
    metrics = self_correction.run(hm, n=3, out_dir=tmp_path, max_denoising_steps=4)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved["per_task"]) == ["random"] and "accuracy_revised" not in saved["per_task"]["random"]
    assert saved["per_task"]["random"]["samples_revised"]["n"] == 3
    assert (tmp_path / "revisions.png").is_file() and saved["figures"] == ["revisions.png"]
    assert metrics["model"]["vocab_size"] == 200


def test_quick_run_on_the_bundled_model_agrees_with_eval(tmp_path):
    from diffinterp.organisms.evaluate import evaluate_task

    hm = di.load_model("toy4")
    metrics = self_correction.run(hm, out_dir=tmp_path, quick=True, tasks=("arith",))
    arith = metrics["per_task"]["arith"]
    revised, unrevised = arith["accuracy_revised"], arith["accuracy_unrevised"]
    assert revised["n"] == arith["samples_revised"]["k"] and revised["n"] + unrevised["n"] == 24
    accuracy = (revised["k"] + unrevised["k"]) / 24
    assert accuracy == pytest.approx(evaluate_task(hm, "arith", n=24, batch_size=64)["accuracy"])
    assert sum(metrics["revisions_per_sample_by_step"]) * 24 >= arith["samples_revised"]["k"]


def test_a_smaller_batch_size_reaches_every_run_and_the_gate_replays_the_same_chunks(tmp_path):
    """``batch_size=`` passes through a study's generation arguments (once a TypeError in the gate's
    one-pass replay): the full run and the one-pass gate agree with ``evaluate_task`` in chunks of 2."""
    from diffinterp.organisms.evaluate import evaluate_task

    hm = di.load_model("answer-first")
    metrics = self_correction.run(hm, n=4, out_dir=tmp_path, batch_size=2)
    gate = metrics["per_task"]["solve"]["gate"]
    for key, kwargs in (("full_accuracy", {}), ("one_pass_accuracy", {"max_denoising_steps": 1})):
        reference = evaluate_task(hm, "solve", n=4, batch_size=2, **kwargs)
        assert gate[key]["n"] == 4 and gate[key]["value"] == pytest.approx(reference["accuracy"]), key
    assert metrics["options"]["batch_size"] == 2
