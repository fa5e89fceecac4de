"""Smearing detectors on hand-made canvases whose answers are known, and the study end to end."""

from __future__ import annotations

import json

import pytest
import torch

import diffinterp as di
from diffinterp.figures import smearing as smf
from diffinterp.phenomena import smearing as sm
from diffinterp.records.trajectory import BlockRecord, StepRecord, Trajectory

PAD, EOS = 0, 1
SPECIAL = (EOS, PAD)


# ------------------------------------------------------------------------------- token smears
def test_token_smear_spread_over_final_position_is_detected():
    assert sm.canvas_token_smears([5, 6, 6, 1, 0], [5, 6, 7, 1, 0], ignore=SPECIAL) == [(6, 1, (1, 2))]


def test_token_smear_next_to_final_position_is_detected():
    # 6 belongs at 1 but sits on 2 and 3: shifted and spread, touching its final place
    assert sm.canvas_token_smears([5, 3, 6, 6, 9], [5, 6, 7, 8, 9], ignore=SPECIAL) == [(6, 1, (2, 3))]


@pytest.mark.parametrize(
    ("canvas", "final"),
    [
        ([5, 6, 7, 1, 0], [5, 6, 7, 1, 0]),  # already resolved
        ([6, 6, 6, 1, 0], [6, 6, 7, 1, 0]),  # the final canvas repeats 6 there legitimately
        ([5, 7, 6, 1, 0], [5, 6, 7, 1, 0]),  # a swap: no token on two positions
        ([9, 2, 6, 6, 5], [6, 2, 3, 4, 5]),  # a run of 6 that neither holds nor touches position 0
        ([5, 1, 1, 0, 0], [5, 1, 0, 0, 0]),  # EOS smeared: ignored by default
    ],
)
def test_token_smear_negatives(canvas, final):
    assert sm.canvas_token_smears(canvas, final, window=3, ignore=SPECIAL) == []


def test_token_smear_special_tokens_count_when_not_ignored():
    assert sm.canvas_token_smears([5, 1, 1, 0, 0], [5, 1, 0, 0, 0]) == [(1, 1, (1, 2))]


def test_token_smear_rejects_bad_input():
    with pytest.raises(ValueError, match="positions"):
        sm.canvas_token_smears([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="min_width"):
        sm.canvas_token_smears([1, 2], [1, 2], min_width=1)


# ------------------------------------------------------------------------------- soft smears
def _probs(rows: list[dict[int, float]], vocab: int = 10) -> torch.Tensor:
    probs = torch.zeros(len(rows), vocab)
    for i, row in enumerate(rows):
        for token, p in row.items():
            probs[i, token] = p
    return probs


def test_soft_smear_mass_on_neighbours():
    probs = _probs([{5: 1.0}, {6: 1.0}, {6: 0.4, 7: 0.6}])
    (token, p, mass, peak), *rest = sm.canvas_soft_smears(probs, [5, 6, 7], threshold=0.3)
    assert (token, p, peak, rest) == (6, 1, 2, [])
    assert mass == pytest.approx(0.4)
    assert sm.canvas_soft_smears(probs, [5, 6, 7], threshold=0.5) == []
    assert sm.canvas_soft_smears(_probs([{5: 1.0}, {6: 1.0}, {7: 1.0}]), [5, 6, 7]) == []


# ------------------------------------------------------------------------------- sequence smears
def test_sequence_smear_shifted_run_is_detected_with_its_shift():
    final = [3, 4, 5, 6, 1, 0, 0]
    assert sm.canvas_sequence_smears([4, 5, 6, 1, 0, 0, 0], final, ignore=SPECIAL) == [(1, 0, 3)]
    assert sm.canvas_sequence_smears([9, 9, 5, 6, 7, 1], [5, 6, 7, 8, 1, 0], ignore=SPECIAL) == [(-2, 2, 3)]


@pytest.mark.parametrize(
    ("canvas", "final"),
    [
        ([3, 4, 5, 6, 1, 0], [3, 4, 5, 6, 1, 0]),  # already resolved
        ([7, 7, 7, 7, 9, 1], [7, 7, 7, 7, 7, 1]),  # one repeated token: a shift is not distinguishable
        ([0, 0, 0, 0, 0, 0], [3, 1, 0, 0, 0, 0]),  # pads
        ([1, 2, 1, 2, 1, 2, 5], [1, 2, 1, 2, 1, 2, 9]),  # periodic and already in place
        ([4, 5, 9, 9, 0, 0], [3, 4, 5, 6, 1, 0]),  # a shifted run of only 2 < min_run
        ([9, 7, 4, 5, 7, 4, 5], [9, 7, 4, 2, 7, 4, 5]),  # "7 4 5" = final[4:7], but "7 4" is in place already
    ],
)
def test_sequence_smear_negatives(canvas, final):
    assert sm.canvas_sequence_smears(canvas, final, ignore=SPECIAL) == []


def test_sequence_smear_max_unshifted_admits_runs_mostly_in_place():
    canvas, final = [9, 7, 4, 5, 7, 4, 5], [9, 7, 4, 2, 7, 4, 5]
    assert sm.canvas_sequence_smears(canvas, final, max_unshifted=0.7, ignore=SPECIAL) == [(3, 1, 3)]


# ------------------------------------------------------------------------------- batches, rates
def test_intermediate_mask_and_live_rows():
    active = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]).bool()
    expected = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]]).bool()
    assert torch.equal(sm.intermediate_mask(active), expected)
    assert torch.equal(
        sm.intermediate_mask(active, torch.tensor([False, True, True])), expected & torch.tensor([0, 1, 1]).bool()
    )
    live = sm.live_rows([torch.tensor([[5, 1], [5, 5]]), torch.tensor([[5, 5], [5, 1]])], eos_id=EOS)
    assert live[0].tolist() == [True, True] and live[1].tolist() == [False, True]


FINALS = torch.tensor([[5, 6, 7, 8, 1, 0], [2, 3, 4, 5, 1, 0]])
CANVASES = torch.tensor(
    [
        [[5, 6, 6, 8, 1, 0], [3, 4, 5, 1, 0, 0]],  # step 0: row 0 smears 6; row 1 shifted by +1
        [[5, 6, 7, 8, 1, 0], [2, 3, 4, 5, 1, 0]],  # step 1: both resolved
        [[5, 5, 7, 8, 1, 0], [2, 3, 4, 5, 1, 0]],  # step 2: row 0's last step (a "smear" that is final)
    ]
)
ACTIVE = torch.tensor([[True, True], [True, True], [True, False]])


def test_scan_block_counts_only_intermediate_canvases():
    token = sm.scan_block("token", CANVASES, FINALS, ACTIVE, ignore=SPECIAL)
    assert token.events == [sm.TokenSmear(0, 0, 6, 1, (1, 2))]
    assert token.canvases == [(0, 0, 0, 0.0), (1, 0, 0, 0.0), (0, 0, 1, 0.5)]  # (row, block, step, relative), by step
    assert token.counts == [1, 0, 0]
    sequence = sm.scan_block("sequence", CANVASES, FINALS, ACTIVE, ignore=SPECIAL)
    assert [(e.row, e.step, e.shift, e.positions, e.tokens) for e in sequence.events] == [
        (1, 0, 1, (0, 1, 2), (3, 4, 5))
    ]
    nxt = sm.scan_block("sequence_next", CANVASES, FINALS, ACTIVE, ignore=SPECIAL)
    assert [(e.row, e.step, e.shift) for e in nxt.events] == [(1, 0, 1)]


def test_smear_rates_known_fractions():
    scan = sm.scan_block("token", CANVASES, FINALS, ACTIVE, ignore=SPECIAL)
    rates = sm.smear_rates(scan, [0, 1])
    assert (rates["samples"]["k"], rates["samples"]["n"]) == (1, 2)
    assert (rates["canvases"]["k"], rates["canvases"]["n"]) == (1, 3)
    assert rates["events_per_canvas"]["value"] == pytest.approx(1 / 3)
    assert {s: (v["k"], v["n"]) for s, v in rates["per_step"].items()} == {0: (1, 2), 1: (0, 1)}
    assert {b: v["n"] for b, v in rates["per_relative_step"].items()} == {"0.00-0.25": 2, "0.50-0.75": 1}
    only_row1 = sm.smear_rates(scan, [1])
    assert only_row1["samples"]["value"] == 0.0 and only_row1["canvases"]["n"] == 1
    merged = sm.SmearScan("token").extend(scan, 10)
    assert sm.row_flags(merged, [10, 11]) == [True, False]


def test_displacement_counts_known_hits():
    # Wrong tokens in intermediate canvases: row 0 step 0 position 2 (holds final[1]: d = -1); row 1 step 0
    # positions 0-3 (0-2 hold final[i + 1]: d = +1; position 3 holds EOS). Pairs with an ignored final[i + d]
    # (EOS, pad) or off the canvas are not counted.
    counts = sm.displacement_counts(CANVASES, FINALS, sm.intermediate_mask(ACTIVE), max_distance=2, ignore=SPECIAL)
    assert counts == {-2: (0, 3), -1: (1, 4), 1: (3, 4), 2: (0, 2)}


def test_displacement_counts_distinct_counts_a_persisting_error_once():
    canvases = torch.tensor([[5, 5, 7, 1]]).repeat(3, 1, 1)  # the same wrong 5 at position 1 for 3 steps
    finals, active = torch.tensor([[5, 6, 7, 1]]), torch.ones(3, 1, dtype=torch.bool)
    mask = sm.intermediate_mask(active)  # steps 0 and 1
    assert sm.displacement_counts(canvases, finals, mask, max_distance=1, ignore=SPECIAL)[-1] == (1, 1)
    assert sm.displacement_counts(canvases, finals, mask, max_distance=1, ignore=SPECIAL, distinct=False)[-1] == (2, 2)


# ------------------------------------------------------------------------------- a hand-made Trajectory
def _trajectory(canvases: torch.Tensor, finals: torch.Tensor, active: torch.Tensor) -> Trajectory:
    steps = []
    for s in range(canvases.shape[0]):
        c = canvases[s]
        steps.append(
            StepRecord(
                s, canvases.shape[0] - s, 1.0, c, c, c, torch.ones_like(c).bool(), c, torch.rand(c.shape), active[s]
            )
        )
    prompt = torch.full((finals.shape[0], 2), 7)
    block = BlockRecord(0, 2, steps, finals)
    return Trajectory(
        prompt, torch.ones_like(prompt), torch.cat([prompt, finals], 1), [block], "continuous", {}, 6, torch.ones(2)
    )


def test_scan_trajectory_and_example_figure(tmp_path):
    trajectory = _trajectory(CANVASES, FINALS, ACTIVE)
    scan = sm.scan_trajectory(trajectory, "token", eos_id=EOS, ignore=SPECIAL)
    assert scan.events == sm.scan_block("token", CANVASES, FINALS, ACTIVE, ignore=SPECIAL).events
    fig = smf.smear_evolution(trajectory, 0, events=scan.events)
    assert len(fig.axes[0].patches) == 2  # the two smeared positions are outlined
    with pytest.raises(ValueError, match="record_logits"):
        sm.scan_trajectory(trajectory, "soft")


# ------------------------------------------------------------------------------- the study
def _check_metrics(path, tasks):
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["tasks"] == tasks and metrics["summary"]
    for name in metrics["figures"]:
        assert (path / name).stat().st_size > 0
    for task in tasks:
        for kind in sm.KINDS:
            for key in ("samples", "canvases"):
                value = metrics["per_task"][task][kind][key]
                assert value["value"] is None or value["ci_low"] <= value["value"] <= value["ci_high"]
                assert 0 <= value["k"] <= value["n"]
            per_step = metrics["per_task"][task][kind]["per_step"].values()
            assert sum(v["n"] for v in per_step) == metrics["per_task"][task][kind]["canvases"]["n"]
    return metrics


def test_study_runs_on_real_pattern_tiny_model(tmp_path):
    from case_studies import smearing

    hm = di.HookedDiffusionGemma(di.tiny_model(di.real_pattern_tiny_config()))
    smearing.run(hm, n=3, out_dir=tmp_path, max_denoising_steps=4)
    metrics = _check_metrics(tmp_path, ["random"])
    assert metrics["per_task"]["random"]["token"]["by_correctness"] is None
    assert metrics["per_task"]["random"]["accuracy"] is None


def test_study_quick_on_bundled_model_matches_recomputation(tmp_path):
    from case_studies import smearing
    from diffinterp.records.decoding import special_ids
    from diffinterp.studies.prompts import prompt_set
    from diffinterp.studies.runs import run_prompt_set

    hm = di.load_model("toy4")
    metrics = smearing.run(hm, quick=True, tasks=["mon"], out_dir=tmp_path)
    _check_metrics(tmp_path, ["mon"])
    eos, pad = special_ids(hm)
    (batch,) = run_prompt_set(hm, prompt_set(hm, "mon", smearing.QUICK_N), batch_size=64, record_logits=True)
    for kind in sm.KINDS:
        scan = sm.scan_trajectory(batch.trajectory, kind, eos_id=eos, ignore=(eos, pad))
        rates = metrics["per_task"]["mon"][kind]
        assert rates["samples"]["k"] == len({e.row for e in scan.events})
        assert (
            rates["canvases"]["n"]
            == len(scan.counts)
            == int(sm.intermediate_mask(batch.trajectory.stack("active")).sum())
        )
    groups = metrics["per_task"]["mon"]["token"]["by_correctness"]
    assert sum(g["n"] for g in groups.values()) == smearing.QUICK_N


def test_soft_smears_are_skipped_when_the_logits_would_not_fit(tmp_path):
    """At the 26B model's size (262k vocabulary, 256-token canvas) recording logits is out of reach:
    the study skips the soft detector by default and says so; the rest still runs."""
    from case_studies import smearing as study

    real = di.HookedDiffusionGemma(di.meta_model(di.real_config()))
    assert study.soft_logits_bytes(real, 24, {}) == 4 * 24 * 256 * 262144 * 48  # generation config: 48 steps
    assert study.soft_logits_bytes(real, 24, {}) > study.SOFT_LOGITS_BUDGET
    hm = di.load_model("toy4")
    assert study.soft_logits_bytes(hm, 64, {}) <= study.SOFT_LOGITS_BUDGET  # the bundled model keeps it
    metrics = study.run(hm, n=4, tasks=["seq"], out_dir=tmp_path, soft=False)
    assert "soft" not in metrics["per_task"]["seq"] and "token" in metrics["per_task"]["seq"]
    assert any("soft smears skipped" in note for note in metrics["notes"])
    assert "seq.soft.sample_rate" not in metrics["summary"]
