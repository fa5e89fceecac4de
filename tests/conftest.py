"""Shared fixtures: tiny random DiffusionGemmas that differ in every structural axis."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import diffinterp as di

# Tiny models gain nothing from intra-op threads, and spinning threads collapse under a busy CPU.
torch.set_num_threads(1)

# Three tiny configs differing in layer count, sliding/full mix, experts/top-k, canvas, vocab,
# head layout and k=v sharing.
TINY_CONFIGS = {
    "l3-e4k2-c8-v96": {},
    "l4-e8k1-c6-v64": dict(
        num_hidden_layers=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        num_experts=8,
        top_k_experts=1,
        canvas_length=6,
        vocab_size=64,
        sliding_window=4,
        attention_k_eq_v=False,
    ),
    "l5-e2k2-c12-v130": dict(
        num_hidden_layers=5,
        layer_types=["sliding_attention"] * 4 + ["full_attention"],
        num_experts=2,
        top_k_experts=2,
        canvas_length=12,
        vocab_size=130,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        sliding_window=6,
    ),
}


def make_prompts(vocab_size: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of different lengths (5 and 3 tokens) and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, 5), generator=generator)
    mask = torch.ones_like(ids)
    if batch > 1:
        ids[1, :2] = 0  # pad
        mask[1, :2] = 0
    return ids, mask


@pytest.fixture(scope="session", params=list(TINY_CONFIGS))
def tiny(request):
    """(name, hf_model, hooked_model) for each tiny config."""
    config = di.tiny_config(**TINY_CONFIGS[request.param])
    model = di.tiny_model(config, seed=0)
    return request.param, model, di.HookedDiffusionGemma(model)


@pytest.fixture(scope="session")
def small():
    """The default tiny config: (hf_model, hooked_model)."""
    model = di.tiny_model(di.tiny_config(), seed=0)
    return model, di.HookedDiffusionGemma(model)


def no_torch_hooks(model: torch.nn.Module) -> bool:
    """True if no forward / pre-forward / backward hook is attached to any module."""
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


@contextmanager
def decoder_step_counter(model):
    """For the body, a plain torch pre-hook counting decoder forwards (``state["calls"]``, from 0 at
    the first): the independent reference's notion of 'step'."""
    state = {"calls": -1}

    def count(_module, _args, _kwargs):
        state["calls"] += 1

    handle = model.model.decoder.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()


@contextmanager
def plain_forward_hook(module, fn, **options):
    """A hand-written torch forward hook on ``module`` for the body: the reference a hook point is checked against
    (``options`` pass to ``register_forward_hook``, e.g. ``with_kwargs=True``)."""
    handle = module.register_forward_hook(fn, **options)
    try:
        yield
    finally:
        handle.remove()
