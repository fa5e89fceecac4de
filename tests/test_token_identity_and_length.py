"""Token identity of intermediate states and early response-length prediction, on hand-made inputs
with known answers (diffinterp.phenomena.token_identity, diffinterp.phenomena.response_length)."""

from __future__ import annotations

import math

import pytest
import torch

from diffinterp.phenomena import response_length as rl
from diffinterp.phenomena import token_identity as ti

EOS, PAD = 1, 0


def test_candidates_are_the_tokens_above_the_threshold_of_active_rows_only():
    logits = torch.full((2, 3, 6), -30.0)
    logits[0, 0, 4] = 0.0  # one token holds all the mass
    logits[0, 1, [2, 3]] = 0.0  # two tokens at 1/2 each
    logits[1, 2, 5] = 0.0  # row 1 is not active: ignored
    found = ti.candidates_from_logits(logits, step=3, threshold=0.3, rows=torch.tensor([True, False]), chunk=2)
    got = sorted(zip(found.row.tolist(), found.position.tolist(), found.token.tolist(), strict=True))
    assert got == [(0, 0, 4), (0, 1, 2), (0, 1, 3)] and set(found.step.tolist()) == {3}
    assert found.prob.tolist() == pytest.approx([1.0, 0.5, 0.5], abs=1e-6)
    # Position 2 of row 0 is uniform over 6 tokens (1/6 < 0.3): nothing is a candidate there.
    assert 2 not in found.position[found.row == 0].tolist()


def test_cosine_neighbours_equal_a_brute_force_ranking():
    torch.manual_seed(0)
    embedding = torch.randn(40, 5)
    got = ti.cosine_neighbours(embedding, [3, 7], k=4, chunk=7)  # chunks smaller than the vocabulary
    unit = torch.nn.functional.normalize(embedding, dim=-1)
    for token in (3, 7):
        sims = [(float(unit[token] @ unit[j]), j) for j in range(40) if j != token]
        assert got[token] == frozenset(j for _, j in sorted(sims, reverse=True)[:4])


def test_classes_on_a_hand_made_canvas():
    # Final canvas of one row: tokens 10 11 12 <eos> <pad> <pad> <pad>... (positions 0..15)
    final = torch.tensor([[10, 11, 12, EOS] + [PAD] * 12])
    neighbours = {10: frozenset({20}), 11: frozenset({21}), 12: frozenset({22})}
    cases = [  # (position, token, class)
        (0, 10, "final"),  # the position's own final token
        (0, 12, "final nearby"),  # the final token of position 2 (within ±10)
        (1, 20, "neighbour"),  # an embedding neighbour of position 0's final token (within the window)
        (2, 22, "neighbour"),  # a neighbour of the position's own final token
        (0, 30, "other"),
        (15, 10, "other"),  # position 0 is 15 positions away: outside ±10
        (5, EOS, "other"),  # <eos> and <pad> are ignored as *nearby* tokens (<eos> sits at position 3) ...
        (6, PAD, "final"),  # ... but a position's own final token counts
    ]
    candidates = ti.Candidates(
        step=torch.zeros(len(cases), dtype=torch.long),
        row=torch.zeros(len(cases), dtype=torch.long),
        position=torch.tensor([c[0] for c in cases]),
        token=torch.tensor([c[1] for c in cases]),
        prob=torch.ones(len(cases)),
    )
    got = ti.classify(candidates, final, neighbours, window=10, ignore=(EOS, PAD))
    assert got.tolist() == [ti.CLASSES.index(c[2]) for c in cases]


def test_class_shares_count_per_class_and_per_step():
    classes = torch.tensor([0, 0, 1, 2, 3, 0, 3, 3])
    steps = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    shares = ti.class_shares(classes, steps)
    assert shares["final"]["k"] == 3 and shares["final"]["n"] == 8
    assert shares["first three"]["value"] == pytest.approx(5 / 8)
    assert shares["per_step"]["0"]["first three"]["value"] == pytest.approx(4 / 5)
    assert shares["per_step"]["1"]["other"]["value"] == pytest.approx(2 / 3)


def test_the_study_reports_a_chance_baseline_against_another_prompts_answer():
    """The shuffled baseline classifies the same candidates against another row's final canvas."""
    final = torch.tensor([[10, 11, EOS, PAD], [12, 13, EOS, PAD]])
    candidates = ti.Candidates(
        step=torch.zeros(2, dtype=torch.long),
        row=torch.tensor([0, 1]),
        position=torch.tensor([0, 0]),
        token=torch.tensor([10, 12]),
        prob=torch.ones(2),
    )
    own = ti.classify(candidates, final, {}, window=10, ignore=(EOS, PAD))
    shuffled = ti.classify(candidates, final.roll(1, 0), {}, window=10, ignore=(EOS, PAD))
    assert own.tolist() == [0, 0] and shuffled.tolist() == [3, 3]


# ---------------------------------------------------------------- response length
def _logits_with_end_mass(end_mass: torch.Tensor, vocab: int = 5) -> torch.Tensor:
    """Logits ``[B, P, V]`` whose softmax puts ``end_mass`` on <eos> and the rest on token 3."""
    logits = torch.full((*end_mass.shape, vocab), -1e4)
    logits[..., EOS] = torch.log(end_mass.clamp_min(1e-9))
    logits[..., 3] = torch.log((1 - end_mass).clamp_min(1e-9))
    return logits


def test_predicted_length_is_the_first_position_past_one_half():
    end = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.1, 0.1, 0.1, 0.1]])
    prob = rl.end_probability(_logits_with_end_mass(end), [EOS, PAD])
    assert torch.allclose(prob, end, atol=1e-5)
    assert rl.predicted_lengths(prob).tolist() == [2, 4]  # row 1: never past one half -> the canvas length
    assert rl.output_lengths(torch.tensor([[5, 6, EOS, PAD], [5, 5, 5, 5]]), EOS).tolist() == [2, 4]


def test_length_settle_step_on_a_hand_made_trajectory():
    # Steps x rows: predicted lengths; truth [3, 2, 4]; row 2 stops after step 1 (inactive at 2, 3).
    predicted = torch.tensor([[5, 2, 4], [3, 4, 4], [3, 2, 9], [3, 2, 9]])
    active = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]]).bool()
    truth = torch.tensor([3, 2, 4])
    # row 0: right from step 1 on; row 1: wrong at step 1, right from step 2; row 2: right at
    # every step it ran (0, 1), what it predicts after it stopped does not count.
    assert rl.length_settle_steps(predicted, truth, active).tolist() == [1, 2, 0]
    wrong_at_end = torch.tensor([[3], [3], [1]])
    assert rl.length_settle_steps(wrong_at_end, torch.tensor([3]), torch.ones(3, 1).bool()).tolist() == [-1]
    summary = rl.length_summary(predicted, truth, active)
    assert summary["right_by_step"]["0"]["k"] == 2 and summary["right_by_step"]["2"]["n"] == 2
    assert summary["right_at_end"]["value"] == 1.0 and summary["right_from_step0"]["k"] == 1
    assert summary["settle_step"]["value"] == pytest.approx(1.0) and math.isfinite(summary["settle_step"]["ci_high"])
