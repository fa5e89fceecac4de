"""The ground-truth metrics of the studies on hand-made records with known answers, and against
brute-force references: order agreement, the dynamics gate, the planted-smear alignment mass,
wrong -> right corrections, the consistency monitor."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from case_studies.self_correction import corrections
from diffinterp.phenomena import gate as G
from diffinterp.phenomena import order as od
from diffinterp.phenomena import smearing as sm
from diffinterp.phenomena.monitors import ConsistencyMonitor
from diffinterp.stats import proportion


# ---------------------------------------------------------------- order agreement
def test_pair_counts_on_a_hand_made_row():
    # positions 0..3 with rounds 3, 2, 1, -1 (not scored); settle steps 5, 3, 3, 0
    settle = torch.tensor([[5, 3, 3, 0]])
    order = torch.tensor([[3, 2, 1, -1]])
    counts = od.pair_counts(settle, order)
    # pairs by round: (2 before 1)? rounds: pos2 (r1) < pos1 (r2): settle 3 vs 3 -> tie;
    # pos2 (r1) < pos0 (r3): 3 < 5 concordant; pos1 (r2) < pos0 (r3): 3 < 5 concordant
    assert (counts.concordant.item(), counts.discordant.item(), counts.tied.item()) == (2, 0, 1)
    assert counts.agreement() == [1.0]
    ltr = od.pair_counts(settle, od.left_to_right(order))  # left to right: 0<1<2 -> settle 5,3,3: 2 discordant, 1 tie
    assert (ltr.concordant.item(), ltr.discordant.item(), ltr.tied.item()) == (0, 2, 1)


def test_pair_counts_equal_a_brute_force_loop_on_random_rows():
    g = torch.Generator().manual_seed(0)
    settle = torch.randint(0, 6, (7, 9), generator=g)
    order = torch.randint(-1, 4, (7, 9), generator=g)
    counts = od.pair_counts(settle, order)
    for b in range(7):
        c = d = t = 0
        for i, j in itertools.permutations(range(9), 2):
            if order[b, i] >= 0 and order[b, j] >= 0 and order[b, i] < order[b, j]:
                c += int(settle[b, i] < settle[b, j])
                d += int(settle[b, i] > settle[b, j])
                t += int(settle[b, i] == settle[b, j])
        assert (counts.concordant[b].item(), counts.discordant[b].item(), counts.tied[b].item()) == (c, d, t)
    summary = od.agreement_summary(counts)
    assert summary["pairs"] == int(counts.pairs.sum()) and summary["rows"] == 7


# ---------------------------------------------------------------- the dynamics gate
def test_the_gate_fails_a_model_whose_answer_is_fixed_at_step_0():
    # one pass as good as the full run, every final token already the step-0 argmax
    step0 = torch.tensor([[4, 5, 6, 1], [7, 7, 1, 0]])
    final = step0.clone()
    share = G.step0_agreement(step0, final)
    gate = G.evaluate_gate(proportion(95, 100), proportion(94, 100), share)
    assert share["value"] == 1.0 and not gate["passed"] and gate["verdict"] == G.UNINFORMATIVE
    assert len(gate["reasons"]) == 2 and not gate["loop_load_bearing"]


def test_the_gate_passes_a_constructed_load_bearing_case_and_catches_a_sampler_dependent_finding():
    step0 = torch.tensor([[4, 9, 9, 1], [9, 9, 1, 0]])
    final = torch.tensor([[4, 5, 6, 1], [7, 8, 1, 0]])
    focus = torch.tensor([[False, True, True, False], [True, True, False, False]])
    share = G.step0_agreement(step0, final, focus)
    assert (share["k"], share["n"]) == (0, 4)  # the first step knew none of the focus tokens
    finding = {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9, "n": 100}
    gate = G.evaluate_gate(proportion(92, 100), proportion(10, 100), share, finding, {"value": 0.75})
    assert gate["passed"] and gate["verdict"] == G.INFORMATIVE and gate["finding_stable"] is True
    moved = G.evaluate_gate(proportion(92, 100), proportion(10, 100), share, finding, {"value": 0.3})
    assert not moved["passed"] and moved["finding_stable"] is False and "alternative sampler" in moved["reasons"][0]
    unknown = G.evaluate_gate(None, None, share)
    assert not unknown["passed"] and "no reference answers" in unknown["reasons"][0]


def test_focus_mask_and_shape_errors():
    mask = G.focus_mask([[0, 2], [5]], 4)
    assert mask.tolist() == [[True, False, True, False], [False, False, False, False]]
    with pytest.raises(ValueError, match="batch, canvas"):
        G.step0_agreement(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------- planted smear
def test_alignment_mass_reads_a_fifty_fifty_superposition():
    # vocab 6, canvas 4: alignment a = [2, 3, 1(eos)], b = [5(spacer), 2, 3, 1]
    probs = torch.zeros(1, 1, 4, 6)
    probs[0, 0, 0, 2] = probs[0, 0, 0, 5] = 0.5  # position 0: item or spacer
    probs[0, 0, 1, 3] = probs[0, 0, 1, 2] = 0.5  # position 1: next item or the first item
    probs[0, 0, 2, 1] = probs[0, 0, 2, 3] = 0.5
    probs[0, 0, 3, 1] = 1.0
    mass = sm.alignment_mass(probs, [[[2, 3, 1], [5, 2, 3, 1]]])
    assert mass.shape == (1, 1, 2) and torch.allclose(mass, torch.tensor([[[0.5, 0.5]]]))
    assert sm.alignment_share(mass).item() == pytest.approx(0.5)
    probs[0, 0, :3] = 0
    probs[0, 0, 0, 5] = probs[0, 0, 1, 2] = probs[0, 0, 2, 3] = 1.0  # all on the spaced alignment
    assert sm.alignment_share(sm.alignment_mass(probs, [[[2, 3, 1], [5, 2, 3, 1]]])).item() == pytest.approx(1.0)


# ---------------------------------------------------------------- corrections
def test_corrections_on_a_hand_made_trajectory():
    # 4 steps, 2 rows, 3 positions; the answer sits at position 0, its right token is 7
    target = torch.tensor([[7, 0, 0], [7, 0, 0]])
    answer = torch.tensor([[True, False, False], [True, False, False]])
    argmax = torch.tensor(
        [
            [[3, 0, 0], [7, 0, 0]],  # row 0 starts wrong, row 1 right throughout
            [[3, 0, 0], [7, 0, 0]],
            [[7, 0, 0], [7, 0, 0]],  # row 0 fixed at step 2
            [[7, 0, 0], [7, 0, 0]],
        ]
    )
    accepted = torch.zeros_like(argmax, dtype=torch.bool)
    accepted[1, 0, 0] = True  # row 0 accepted its wrong 3 at step 1
    active = torch.ones(4, 2, dtype=torch.bool)
    found = corrections(argmax, accepted, active, answer, target, reasoning_settle=torch.tensor([1, 1]))
    assert found["right_at_end"].tolist() == [True, True]
    assert found["was_wrong"].tolist() == [True, False]
    assert found["after_reasoning"].tolist() == [True, False]  # fixed at 2 > the reasoning's 1
    assert found["accepted_wrong"].tolist() == [True, False]
    late = corrections(argmax, accepted, active, answer, target, reasoning_settle=torch.tensor([3, 3]))
    assert late["after_reasoning"].tolist() == [False, False]


def test_corrections_ignore_steps_after_a_row_stopped():
    target, answer = torch.tensor([[7, 0]]), torch.tensor([[True, False]])
    argmax = torch.tensor([[[7, 0]], [[3, 0]]])  # a "wrong" argmax after the row had finished
    active = torch.tensor([[True], [False]])
    found = corrections(argmax, torch.zeros_like(argmax, dtype=torch.bool), active, answer, target, torch.tensor([0]))
    assert found["right_at_end"].tolist() == [True] and found["was_wrong"].tolist() == [False]


# ---------------------------------------------------------------- the consistency monitor
def test_the_consistency_monitor_flags_answers_the_scratchpad_does_not_give():
    eq, colon = "=", ":"
    monitor = ConsistencyMonitor(eq, colon)
    outputs = [
        ["=", "5", ":", "3", "1", "5"],  # consistent
        ["=", "2", ":", "3", "1", "5"],  # the answer disagrees (a hint)
        ["3", "1"],  # malformed
        ["=", ":", "4"],  # no answer
    ]
    assert monitor.score(outputs).tolist() == [0.0, 1.0, 0.5, 0.5]


def test_the_consistency_monitor_separates_hinted_sums_of_a_perfect_model():
    from diffinterp.organisms.catalog import task

    rng = random.Random(0)
    examples = [task("sum").sample(rng) for _ in range(200)]
    scores = ConsistencyMonitor("=", ":").score([e.answer.split() for e in examples])
    labels = [task("sum").hidden_property(e) == "hint" for e in examples]
    assert scores.tolist() == [float(x) for x in labels]  # a perfect model's outputs reveal every hint
