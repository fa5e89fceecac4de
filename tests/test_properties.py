"""Property-based checks (hypothesis): on random tiny DiffusionGemmas, prompts, paddings, EOS tokens and
sampler settings, the instrumented sampler equals HF ``generate`` and records round-trip exactly."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffinterp as di


@st.composite
def configs(draw):
    layers = draw(st.integers(1, 3))
    types = [draw(st.sampled_from(["sliding_attention", "full_attention"])) for _ in range(layers - 1)]
    experts = draw(st.integers(2, 4))
    return di.tiny_config(
        num_hidden_layers=layers,
        layer_types=types + ["full_attention"],  # transformers keeps the last layer full
        vocab_size=draw(st.sampled_from([32, 64, 96])),
        canvas_length=draw(st.sampled_from([4, 6, 8])),
        num_experts=experts,
        top_k_experts=draw(st.integers(1, experts)),
        sliding_window=draw(st.integers(2, 8)),
        attention_k_eq_v=draw(st.booleans()),
    )


@st.composite
def runs(draw):
    config = draw(configs())
    vocab = config.text_config.vocab_size
    batch = draw(st.integers(1, 3))
    lengths = [draw(st.integers(1, 6)) for _ in range(batch)]
    width = max(lengths)
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.tensor([draw(st.integers(3, vocab - 1)) for _ in range(length)])
        mask[row, width - length :] = 1
    t_min = draw(st.floats(0.05, 1.0))
    gen = dict(
        max_new_tokens=config.canvas_length * draw(st.integers(1, 2)),
        max_denoising_steps=draw(st.integers(1, 5)),
        t_min=t_min,
        t_max=t_min + draw(st.floats(0.01, 1.0)),  # transformers wants t_max > t_min
        stability_threshold=draw(st.integers(0, 3)),
        confidence_threshold=draw(st.floats(0.001, 2.0)),  # and a positive confidence threshold
        eos_token_id=draw(st.integers(1, vocab - 1)),  # the EOS lands wherever the model happens to write it
        pad_token_id=0,
    )
    entropy_bound = draw(st.floats(0.01, 2.0))  # the sampler needs a positive bound
    return config, ids, mask, gen, entropy_bound, draw(st.integers(0, 2**16))


def _sampler(entropy_bound):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    return EntropyBoundSamplerConfig(entropy_bound=entropy_bound)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_the_instrumented_sampler_equals_hf_generate(run):
    config, ids, mask, gen, bound, seed = run
    model = di.tiny_model(config, seed=seed % 7)
    hm = di.HookedDiffusionGemma(model)
    torch.manual_seed(seed)
    ours = hm.generate(ids, attention_mask=mask, sampler_config=_sampler(bound), **gen)
    torch.manual_seed(seed)
    theirs = model.generate(input_ids=ids, attention_mask=mask, sampler_config=_sampler(bound), **gen)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert hm.attached_hook_points == []


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.booleans())
def test_records_round_trip_exactly(tmp_path_factory, run, record_logits):
    config, ids, mask, gen, bound, seed = run
    hm = di.HookedDiffusionGemma(di.tiny_model(config, seed=seed % 7))
    torch.manual_seed(seed)
    traj, cache = hm.run_with_cache(
        ids, "decoder.blocks.0.*", attention_mask=mask, sampler_config=_sampler(bound), record_logits=record_logits,
        **gen,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("roundtrip")
    loaded = di.Trajectory.load(traj.save(folder / "t.safetensors"))
    again = di.DenoisingCache.load(cache.save(folder / "c.safetensors"))
    for name in ("prompt_ids", "attention_mask", "sequences", "tokens_per_forward"):
        assert torch.equal(getattr(loaded, name), getattr(traj, name))
    assert (loaded.bottleneck, loaded.generation, loaded.canvas_length) == (
        traj.bottleneck,
        traj.generation,
        traj.canvas_length,
    )
    for a, b in zip(loaded.blocks, traj.blocks, strict=True):
        assert torch.equal(a.final_canvas, b.final_canvas) and a.n_steps == b.n_steps
        for x, y in zip(a.steps, b.steps, strict=True):
            for field in ("canvas_in", "sampled", "argmax", "accepted", "canvas_out", "entropy", "active"):
                assert torch.equal(getattr(x, field), getattr(y, field))
            assert (x.logits is None) == (y.logits is None)
            assert x.logits is None or torch.equal(x.logits, y.logits)
            assert torch.equal(x.rng_state.cpu, y.rng_state.cpu)
    assert set(again.keys()) == set(cache.keys())
    assert all(
        torch.equal(again.get(*key), tensor) and again.get(*key).dtype == tensor.dtype for key, tensor in cache.items()
    )


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(2, 300)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
    scale=st.floats(0.01, 50.0),
    masked=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_recorded_entropy_is_bit_for_bit_torchs_categorical(shape, dtype, scale, masked, seed):
    """The sampler records entropy with the operations of ``Categorical(logits=).entropy()`` (what
    transformers' entropy-bound sampler computes) without its validation: it must be the same bits,
    also where logits are -inf (the clamp) and in half precision."""
    from diffinterp.core.sampler import token_entropy

    logits = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)
    logits[..., : min(masked, shape[-1] - 1)] = float("-inf")
    assert torch.equal(token_entropy(logits), torch.distributions.Categorical(logits=logits).entropy())
