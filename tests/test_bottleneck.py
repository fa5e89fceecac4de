"""The token bottlenecks against hand-computed distributions (the paper's top-k / top-p rules)."""

from __future__ import annotations

import pytest
import torch

from diffinterp.core.bottleneck import Bottleneck, bottleneck_logits, kept_logits, top_k_logits, top_p_logits

PROBS = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])


def as_logits(probs: torch.Tensor) -> torch.Tensor:
    return probs.log() + 3.0  # any shift: only the softmax matters


def test_top_k_keeps_k_tokens_and_spreads_the_rest_uniformly():
    out = top_k_logits(as_logits(PROBS), 2).softmax(-1)
    assert torch.allclose(out, torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1]), atol=1e-6)
    renorm = top_k_logits(as_logits(PROBS), 2, "renorm").softmax(-1)
    assert torch.allclose(renorm, torch.tensor([5 / 7, 2 / 7, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(top_k_logits(as_logits(PROBS), 9).softmax(-1), PROBS, atol=1e-6)  # k >= V: unchanged


def test_top_p_keeps_tokens_above_p_and_always_the_most_probable():
    out = top_p_logits(as_logits(PROBS), 0.12).softmax(-1)
    assert torch.allclose(out, torch.tensor([0.5, 0.2, 0.15, 0.075, 0.075]), atol=1e-6)
    renorm = top_p_logits(as_logits(PROBS), 0.12, "renorm").softmax(-1)
    assert torch.allclose(renorm, torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85, atol=1e-6)
    only_max = top_p_logits(as_logits(PROBS), 0.9).softmax(-1)  # nothing reaches 0.9: the argmax stays
    assert torch.allclose(only_max, torch.tensor([0.5, 0.125, 0.125, 0.125, 0.125]), atol=1e-6)


def test_a_kept_set_with_all_the_mass_gives_the_others_nothing():
    probs = torch.tensor([0.7, 0.3, 0.0, 0.0])
    out = kept_logits(probs, probs > 0)
    assert torch.equal(out.softmax(-1), probs) and torch.isinf(out[2:]).all()


def test_bottleneck_logits_work_per_position_in_batches():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g)
    out = bottleneck_logits(Bottleneck.parse("topk:3"), logits, torch.zeros(2, 3, dtype=torch.long)).softmax(-1)
    probs = logits.softmax(-1)
    top, index = probs.topk(3, -1)
    assert torch.allclose(out.gather(-1, index), top, atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(2, 3), atol=1e-6)
    others = torch.ones_like(out, dtype=torch.bool).scatter_(-1, index, False)
    rest = ((1 - top.sum(-1, keepdim=True)) / 4).expand_as(out)
    assert torch.allclose(out[others], rest[others], atol=1e-6)
    assert out.dtype == logits.dtype


@pytest.mark.parametrize("spec", ["continuous", "argmax", "sample", "none", "topk:8", "topk:8:renorm", "topp:0.03",
                                  "topp:0.5:renorm"])  # fmt: skip
def test_modes_round_trip_through_their_names(spec):
    assert str(Bottleneck.parse(spec)) == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [("topk:0", "positive integer"), ("topk:x", "positive integer"), ("topp:0", r"probability in \(0, 1\]"),
     ("topp:1.5", r"probability in \(0, 1\]"), ("topp:abc", "probability"), ("topk:8:soft", "remainder rule"),
     ("beam", "valid modes")],
)  # fmt: skip
def test_bad_modes_name_what_is_valid(spec, message):
    with pytest.raises(ValueError, match=message):
        Bottleneck.parse(spec)
