"""Trajectory and DenoisingCache: indexing, filters, budgets, save/load and bad files."""

from __future__ import annotations

import pytest
import torch

import diffinterp as di
from diffinterp.records import serialization
from tests.conftest import make_prompts

GEN = dict(max_new_tokens=16, max_denoising_steps=4)


@pytest.fixture(scope="module")
def recorded(small):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 0)
    torch.manual_seed(0)
    trajectory, cache = hm.run_with_cache(
        input_ids,
        names_filter=["decoder.blocks.*.hook_resid_post", "encoder.hook_embed", "decoder.hook_logits"],
        attention_mask=mask,
        record_logits=True,
        **GEN,
    )
    return trajectory, cache


def test_trajectory_fields_are_consistent(recorded):
    trajectory, _ = recorded
    assert trajectory.steps_per_block == [4, 4]
    for block in trajectory.blocks:
        for step in block.steps:
            assert step.canvas_in.shape == step.sampled.shape == step.argmax.shape == (2, 8)
            assert torch.equal(step.argmax, step.logits.argmax(-1))  # temperature keeps the argmax
            accepted = step.accepted & step.active[:, None]
            assert torch.equal(step.canvas_out[accepted], step.sampled[accepted])
            probs = (step.logits / step.temperature).softmax(-1)
            entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
            torch.testing.assert_close(step.entropy, entropy, rtol=1e-4, atol=1e-5)
            # and bit for bit what the entropy-bound sampler computed from the processed logits
            sampler_entropy = torch.distributions.Categorical(logits=step.logits / step.temperature).entropy()
            assert torch.equal(step.entropy, sampler_entropy)
        for earlier, later in zip(block.steps, block.steps[1:], strict=False):
            assert torch.equal(later.canvas_in, earlier.canvas_out)
    assert torch.equal(trajectory.new_tokens()[:, :8], trajectory.blocks[0].final_canvas)
    assert trajectory.stack("entropy", 1).shape == (4, 2, 8)


def test_large_logits_record_the_entropy_the_sampler_computed(monkeypatch):
    """Past ``READ_ENTROPY_FROM`` logits elements the recorded entropy is the sampler's own (read
    from its sort, not recomputed): the same bits as Categorical's, and the same run as HF's."""
    from diffinterp.core import sampler as sampler_module

    model = di.tiny_model(di.tiny_config(vocab_size=2100), seed=0)
    hm = di.HookedDiffusionGemma(model)
    input_ids, mask = make_prompts(2100, 2, 0)
    assert 2 * model.config.canvas_length * 2100 >= sampler_module.READ_ENTROPY_FROM

    def no_recompute(_logits):
        raise AssertionError("the entropy was recomputed")

    monkeypatch.setattr(sampler_module, "token_entropy", no_recompute)
    torch.manual_seed(1)
    trajectory = hm.generate(input_ids, attention_mask=mask, record_logits=True, **GEN)
    monkeypatch.undo()
    torch.manual_seed(1)
    assert torch.equal(trajectory.sequences, model.generate(input_ids, attention_mask=mask, **GEN).sequences)
    for block in trajectory.blocks:
        for step in block.steps:
            reference = torch.distributions.Categorical(logits=step.logits / step.temperature).entropy()
            assert torch.equal(step.entropy, reference)


def test_trajectory_save_load_roundtrip(recorded, tmp_path):
    trajectory, _ = recorded
    loaded = di.Trajectory.load(trajectory.save(tmp_path / "traj.safetensors"))
    assert torch.equal(loaded.sequences, trajectory.sequences)
    assert loaded.generation == trajectory.generation and loaded.bottleneck == "continuous"
    for a, b in zip(loaded.blocks, trajectory.blocks, strict=True):
        assert a.prefix_len == b.prefix_len
        for x, y in zip(a.steps, b.steps, strict=True):
            for name in ("canvas_in", "sampled", "argmax", "accepted", "canvas_out", "entropy", "active", "logits"):
                assert torch.equal(getattr(x, name), getattr(y, name)), name
            assert x.temperature == y.temperature and x.hf_step == y.hf_step


def test_loaded_trajectory_reruns_after_restoring_runtime(small, tmp_path):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 5)
    torch.manual_seed(2)
    trajectory = hm.generate(
        input_ids, attention_mask=mask, record_logits=True, max_new_tokens=20, max_denoising_steps=4, pad_token_id=0
    )
    loaded = di.Trajectory.load(trajectory.save(tmp_path / "traj.safetensors"))
    with pytest.raises(ValueError, match="restore_runtime"):
        hm.step_inputs(loaded, 0, 1)
    hm.restore_runtime(loaded)
    for block in loaded.blocks:
        for step in block.steps:
            with torch.no_grad():
                logits = model(**hm.step_inputs(loaded, block.block, step.step)).logits
            assert torch.equal(logits, step.logits), (block.block, step.step)


def test_cache_indexing_and_stack(recorded):
    trajectory, cache = recorded
    name = "decoder.blocks.1.hook_resid_post"
    assert cache[name, 2].shape == (2, 8, 64)
    assert torch.equal(cache[name, 2, 1], cache.get(name, 2, block=1))
    assert cache.stack(name).shape == (4, 2, 8, 64)
    assert cache.steps(name) == [0, 1, 2, 3] and cache.blocks(name) == [0, 1]
    assert ("decoder.hook_logits", 3, 1) in cache.keys()
    assert torch.equal(cache["decoder.hook_logits", 3, 1], trajectory.steps[1][3].logits)
    with pytest.raises(KeyError, match=r"cache\['decoder.hook_logits', step\]"):
        cache["decoder.hook_logits"]
    with pytest.raises(KeyError, match="did you mean"):
        cache["decoder.blocks.1.hook_resid_pst", 0]


def test_cache_filters_device_dtype_positions(small):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 1)
    torch.manual_seed(0)
    full_trajectory, full = hm.run_with_cache(input_ids, names_filter="decoder.blocks.0.*", attention_mask=mask, **GEN)
    torch.manual_seed(0)
    trajectory, cache = hm.run_with_cache(
        input_ids,
        names_filter=["decoder.blocks.0.hook_resid_post", "decoder.blocks.0.attn.hook_pattern"],
        steps=[1, 3],
        blocks=[1],
        positions=[0, 5],
        dtype=torch.float16,
        device="cpu",
        attention_mask=mask,
        **GEN,
    )
    assert torch.equal(trajectory.sequences, full_trajectory.sequences)
    assert sorted(cache.keys()) == sorted(
        (n, s, 1) for n in ("decoder.blocks.0.hook_resid_post", "decoder.blocks.0.attn.hook_pattern") for s in (1, 3)
    )
    resid = cache["decoder.blocks.0.hook_resid_post", 3, 1]
    assert resid.dtype == torch.float16 and resid.shape == (2, 2, 64)
    assert torch.equal(resid, full["decoder.blocks.0.hook_resid_post", 3, 1][:, [0, 5]].half())
    assert cache["decoder.blocks.0.attn.hook_pattern", 1, 1].shape[2] == 2  # query positions
    assert cache.positions == (0, 5)
    sub = full.filter(names=["decoder.blocks.0.hook_q"], steps=[0], blocks=[0])
    assert sub.keys() == [("decoder.blocks.0.attn.hook_q", 0, 0)] or sub.keys() == []
    sub = full.filter(names=lambda n: n.endswith("hook_q"), steps=[0], blocks=[0])
    assert sub.keys() == [("decoder.blocks.0.attn.hook_q", 0, 0)]


def test_cache_budget_raises_before_running(small):
    model, hm = small
    input_ids, _ = make_prompts(96, 1, 0)
    calls = []
    handle = model.model.decoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(di.CacheBudgetError, match="over max_bytes"):
            hm.run_with_cache(input_ids, names_filter="decoder.blocks.*.hook_resid_post", max_bytes=1000, **GEN)
    finally:
        handle.remove()
    assert calls == []
    estimate = hm.estimate_cache_bytes(input_ids, "decoder.blocks.*.hook_resid_post", **GEN)
    assert estimate == 3 * 2 * 4 * 8 * 64 * 4  # layers × blocks × steps × canvas × d_model × float32
    torch.manual_seed(0)
    _, cache = hm.run_with_cache(input_ids, names_filter="decoder.blocks.*.hook_resid_post", max_bytes=estimate, **GEN)
    assert cache.nbytes == estimate


def test_estimate_is_an_upper_bound_for_every_hook(small):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 2)
    estimate = hm.estimate_cache_bytes(input_ids, None, **GEN)
    torch.manual_seed(0)
    _, cache = hm.run_with_cache(input_ids, attention_mask=mask, **GEN)
    assert cache.nbytes == estimate


def test_cache_save_load_roundtrip(recorded, tmp_path):
    _, cache = recorded
    loaded = di.DenoisingCache.load(cache.save(tmp_path / "cache.safetensors"))
    assert loaded.keys() == cache.keys()
    for key in cache.keys():
        assert torch.equal(loaded.get(*key), cache.get(*key))


def test_truncated_and_mismatched_files_fail_clearly(recorded, tmp_path):
    trajectory, cache = recorded
    path = cache.save(tmp_path / "cache.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        di.DenoisingCache.load(truncated)
    traj_path = trajectory.save(tmp_path / "traj.safetensors")
    with pytest.raises(ValueError, match="holds a 'diffinterp.Trajectory' record, not a 'diffinterp.DenoisingCache'"):
        di.DenoisingCache.load(traj_path)
    with pytest.raises(FileNotFoundError):
        di.Trajectory.load(tmp_path / "missing.safetensors")


def test_failed_write_leaves_no_file(recorded, tmp_path, monkeypatch):
    _, cache = recorded

    def failing(fd):  # the header and the tensors are written, then the disk fills up
        raise OSError("disk full")

    monkeypatch.setattr(serialization.os, "fsync", failing)
    with pytest.raises(OSError, match="disk full"):
        cache.save(tmp_path / "cache.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_another_acceptance_method_gets_the_entropy_recomputed():
    """The entropy is read from the sort only inside transformers' own ``accept_canvas``: a
    subclass that sorts something else of the same shape first must not be recorded as entropy."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        EntropyBoundSampler,
        EntropyBoundSamplerConfig,
    )

    from diffinterp.core.sampler import READ_ENTROPY_FROM, accept_and_read_entropy, token_entropy

    class SortsFirst(EntropyBoundSampler):
        def accept_canvas(self, current_canvas, denoiser_canvas, logits, cur_step):
            torch.sort(logits.amax(-1), dim=-1)  # a [batch, canvas] float that is not the entropy
            return super().accept_canvas(current_canvas, denoiser_canvas, logits, cur_step)

    shape = (2, 64, 512)
    assert shape[0] * shape[1] * shape[2] >= READ_ENTROPY_FROM
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    canvas = torch.zeros(shape[:2], dtype=torch.long)
    for sampler_class in (EntropyBoundSampler, SortsFirst):
        sampler = sampler_class(EntropyBoundSamplerConfig(entropy_bound=0.4), shape[1], shape[2], 8)
        accepted, entropy = accept_and_read_entropy(sampler.accept_canvas, canvas, canvas + 1, logits, 3)
        assert torch.equal(entropy, token_entropy(logits)), sampler_class.__name__
        assert torch.equal(accepted, EntropyBoundSampler.accept_canvas(sampler, canvas, canvas + 1, logits, 3))
