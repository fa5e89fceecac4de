"""The instrumented sampler reproduces transformers' generate exactly, and every step re-runs exactly."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

import diffinterp as di
from tests.conftest import make_prompts, no_torch_hooks


def _both(model, hm, input_ids, seed, **kwargs):
    torch.manual_seed(seed)
    reference = model.generate(input_ids.clone(), **kwargs)
    torch.manual_seed(seed)
    trajectory = hm.generate(input_ids.clone(), record_logits=True, **kwargs)
    return reference, trajectory


def _assert_steps_rerun_exactly(model, hm, trajectory):
    for block in trajectory.blocks:
        for step in block.steps:
            kwargs = hm.step_inputs(trajectory, block.block, step.step)
            with torch.no_grad():
                logits = model(**kwargs).logits
            assert torch.equal(logits, step.logits), (block.block, step.step)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_generate_matches_hf_over_several_canvases(tiny, seed, batch):
    name, model, hm = tiny
    canvas = model.config.canvas_length
    input_ids, mask = make_prompts(model.config.text_config.vocab_size, batch, seed)
    kwargs = dict(attention_mask=mask, max_new_tokens=2 * canvas + 1, max_denoising_steps=5)
    reference, trajectory = _both(model, hm, input_ids, seed, **kwargs)
    assert len(trajectory.blocks) == 3
    assert torch.equal(trajectory.sequences, reference.sequences), name
    assert torch.equal(trajectory.tokens_per_forward, reference.tokens_per_forward)
    _assert_steps_rerun_exactly(model, hm, trajectory)
    assert no_torch_hooks(model)


def test_generate_matches_hf_with_eos_padding_and_early_stop(tiny):
    """EOS inside a canvas pads the rest; rows stop denoising at different steps."""
    name, model, hm = tiny
    canvas = model.config.canvas_length
    input_ids, mask = make_prompts(model.config.text_config.vocab_size, 2, 7)
    base = dict(attention_mask=mask, max_new_tokens=3 * canvas, max_denoising_steps=8, pad_token_id=0)
    torch.manual_seed(3)
    probe = hm.generate(input_ids.clone(), stability_threshold=0, confidence_threshold=1e-9, **base)
    eos = int(probe.sequences[0, input_ids.shape[1] + canvas // 2])  # a token row 0 produces mid-canvas
    # A confidence threshold between the two rows' mean entropies at step 2 stops them at different steps.
    row_entropy = probe.stack("entropy", 0).mean(-1)[2]
    threshold = float(row_entropy.mean())
    kwargs = dict(base, eos_token_id=eos, stability_threshold=0, confidence_threshold=threshold)
    reference, trajectory = _both(model, hm, input_ids, 3, **kwargs)
    assert torch.equal(trajectory.sequences, reference.sequences), name
    assert (reference.sequences == 0).any(), "the EOS path was not exercised"
    assert min(trajectory.steps_per_block) < 8, "early stopping was not exercised"
    mixed = [s for b in trajectory.blocks for s in b.steps if s.active.any() and not s.active.all()]
    assert mixed, "no step ran with one row finished and another still denoising"
    _assert_steps_rerun_exactly(model, hm, trajectory)


def test_generate_matches_hf_with_every_sampler_argument(small):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 11)
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=12,
        max_denoising_steps=7,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=2.5),
        t_min=0.2,
        t_max=1.3,
        stability_threshold=2,
        confidence_threshold=4.0,
    )
    reference, trajectory = _both(model, hm, input_ids, 5, **kwargs)
    assert torch.equal(trajectory.sequences, reference.sequences)
    temperatures = trajectory.temperatures(0)
    assert temperatures[0] == pytest.approx(0.2 + 1.1 * 7 / 7, rel=1e-6)
    assert temperatures[-1] < temperatures[0]
    _assert_steps_rerun_exactly(model, hm, trajectory)


def test_generate_matches_hf_with_max_length_and_generation_config(small):
    model, hm = small
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    config = DiffusionGemmaGenerationConfig(max_denoising_steps=4, t_min=0.3, t_max=0.9)
    input_ids, _ = make_prompts(96, 1, 2)
    reference, trajectory = _both(model, hm, input_ids, 9, generation_config=config, max_length=21)
    assert torch.equal(trajectory.sequences, reference.sequences)
    assert trajectory.steps_per_block == [4, 4]


@pytest.mark.parametrize("mode", ["argmax", "topk:3", "topk:3:renorm", "topp:0.05", "sample", "none"])
def test_bottleneck_steps_rerun_exactly(small, mode):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 4)
    torch.manual_seed(0)
    trajectory = hm.generate(
        input_ids,
        attention_mask=mask,
        bottleneck=mode,
        record_logits=True,
        max_new_tokens=16,
        max_denoising_steps=5,
        confidence_threshold=6.0,
    )
    assert trajectory.bottleneck == mode
    _assert_steps_rerun_exactly(model, hm, trajectory)


def test_step_inputs_replay_without_recorded_logits(small):
    """Without recorded logits, step_inputs rebuilds the self-conditioning by a teacher-forced replay."""
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 8)
    torch.manual_seed(1)
    recorded = hm.generate(input_ids, attention_mask=mask, record_logits=True, max_new_tokens=8, max_denoising_steps=5)
    torch.manual_seed(1)
    bare = hm.generate(input_ids, attention_mask=mask, max_new_tokens=8, max_denoising_steps=5)
    assert bare.steps[0][4].logits is None
    with torch.no_grad():
        logits = model(**hm.step_inputs(bare, 0, 4)).logits
    assert torch.equal(logits, recorded.steps[0][4].logits)


def test_bottleneck_signal_is_what_the_mode_says(small):
    model, hm = small
    input_ids, _ = make_prompts(96, 1, 3)
    torch.manual_seed(0)
    trajectory = hm.generate(input_ids, bottleneck="argmax", max_new_tokens=8, max_denoising_steps=3)
    signal = hm.step_inputs(trajectory, 0, 2)["self_conditioning_logits"]
    probabilities = signal.float().softmax(-1)
    expected = torch.nn.functional.one_hot(trajectory.steps[0][1].argmax, probabilities.shape[-1]).float()
    assert torch.equal(probabilities, expected)
    torch.manual_seed(0)
    trajectory = hm.generate(input_ids, bottleneck="topk:4:renorm", max_new_tokens=8, max_denoising_steps=3)
    signal = hm.step_inputs(trajectory, 0, 1)["self_conditioning_logits"]
    assert ((signal.float().softmax(-1) > 0).sum(-1) == 4).all()
    # the paper's rule: the top 4 keep the continuous signal's probabilities, the rest share the remainder
    torch.manual_seed(0)
    continuous = hm.generate(input_ids, record_logits=True, max_new_tokens=8, max_denoising_steps=3)
    torch.manual_seed(0)
    trajectory = hm.generate(input_ids, bottleneck="topk:4", max_new_tokens=8, max_denoising_steps=3)
    signal = hm.step_inputs(trajectory, 0, 1)["self_conditioning_logits"].float().softmax(-1)
    own = hm.step_inputs(continuous, 0, 1)["self_conditioning_logits"].float().softmax(-1)  # step 0's signal
    top, index = own.topk(4, dim=-1)
    assert torch.allclose(signal.gather(-1, index), top, atol=1e-6)
    others = torch.ones_like(signal, dtype=torch.bool).scatter_(-1, index, False)
    expected_rest = ((1 - top.sum(-1, keepdim=True)) / (own.shape[-1] - 4)).expand_as(signal)
    assert torch.allclose(signal[others], expected_rest[others], atol=1e-6)
    torch.manual_seed(0)
    trajectory = hm.generate(input_ids, bottleneck="none", max_new_tokens=8, max_denoising_steps=3)
    assert hm.step_inputs(trajectory, 0, 2)["self_conditioning_logits"] is None


def test_bottleneck_rejects_unknown_modes(small):
    _, hm = small
    input_ids, _ = make_prompts(96, 1, 3)
    with pytest.raises(ValueError, match="valid modes: continuous, argmax, topk:K, topk:K:renorm, topp:P"):
        hm.generate(input_ids, bottleneck="hard")
    with pytest.raises(ValueError, match="positive integer"):
        hm.generate(input_ids, bottleneck="topk:0")


def test_replay_reuses_the_random_draws(small, tmp_path):
    """A run replaying a trajectory's RNG states samples the same draws wherever probabilities agree."""
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 12)
    kwargs = dict(attention_mask=mask, max_new_tokens=16, max_denoising_steps=5, record_logits=True)
    torch.manual_seed(0)
    clean = hm.generate(input_ids, **kwargs)
    torch.manual_seed(12345)  # a different seed: only the replay can make the runs agree
    again = hm.generate(input_ids, replay=clean, **kwargs)
    assert torch.equal(again.sequences, clean.sequences)
    torch.manual_seed(777)
    patched = hm.run_with_hooks(
        input_ids,
        fwd_hooks=[("decoder.blocks.0.hook_mlp_out", lambda t, hook: t * 0.5)],
        steps=[3],
        blocks=[1],
        replay=clean,
        **kwargs,
    )
    for block in range(2):  # everything before the patch is identical, draws included
        steps = range(5) if block == 0 else range(3)
        for step in steps:
            assert torch.equal(patched.steps[block][step].canvas_out, clean.steps[block][step].canvas_out)
    assert not torch.equal(patched.steps[1][3].logits, clean.steps[1][3].logits)
    loaded = di.Trajectory.load(clean.save(tmp_path / "clean.safetensors"))
    torch.manual_seed(5)
    assert torch.equal(hm.generate(input_ids, replay=loaded, **kwargs).sequences, clean.sequences)


@contextmanager
def counted_decoder_passes(model):
    """Count decoder forward passes by wrapping ``decoder.forward`` (not a torch hook: an attached
    hook would, rightly, stop ``run_step`` from reusing its logits as the recorded step's)."""
    decoder = model.model.decoder
    calls = []
    original = decoder.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    decoder.forward = counting
    try:
        yield calls
    finally:
        del decoder.forward


@pytest.mark.parametrize("recorded_as", ["nothing", "bfloat16"])
def test_step_reruns_cost_one_pass_per_step_and_equal_the_recorded_run(small, recorded_as):
    """final_outputs, step_inputs / run_step for every step and the sweeps' start states re-run each
    step at most once (S + 1 passes for S steps), with results equal to a run that recorded its
    float32 logits (itself equal to generate); visiting steps backwards or editing a weight in place
    re-derives, and stays exact."""
    from diffinterp.instruments.patching.metrics import final_outputs, final_outputs_and_signals

    model, hm = small
    input_ids, mask = make_prompts(96, 2, 8)
    steps = 6
    kwargs = dict(attention_mask=mask, max_new_tokens=8, max_denoising_steps=steps, stability_threshold=steps + 1)
    torch.manual_seed(1)
    truth = hm.generate(input_ids, record_logits=True, **kwargs)
    assert truth.blocks[0].n_steps == steps

    def trajectory():
        torch.manual_seed(1)
        if recorded_as == "nothing":
            return hm.generate(input_ids, **kwargs)
        return hm.generate(input_ids, record_logits=True, logits_dtype=torch.bfloat16, **kwargs)

    signals = [hm.step_inputs(truth, 0, s)["self_conditioning_logits"] for s in range(steps)]
    run = trajectory()
    with counted_decoder_passes(model) as passes:
        logits, argmax = final_outputs(hm, run)
    assert len(passes) <= steps + 1
    expected = [s.logits if recorded_as == "nothing" else s.logits.bfloat16() for s in truth.blocks[0].steps]
    assert torch.equal(logits, expected[-1].float()) and torch.equal(argmax, truth.blocks[0].steps[-1].argmax)

    run = trajectory()
    with counted_decoder_passes(model) as passes:
        rebuilt = [hm.step_inputs(run, 0, s)["self_conditioning_logits"] for s in range(steps)]
    assert len(passes) <= steps + 1
    assert all(torch.equal(a, b) for a, b in zip(rebuilt[1:], signals[1:], strict=True))

    run = trajectory()
    with counted_decoder_passes(model) as passes:
        rerun = [hm.run_step(run, 0, s) for s in range(steps)]
    assert len(passes) <= steps + 1
    assert all(torch.equal(a, s.logits) for a, s in zip(rerun, truth.blocks[0].steps, strict=True))

    run = trajectory()
    with counted_decoder_passes(model) as passes:
        _, _, starts = final_outputs_and_signals(hm, run, 0, range(steps))
    assert len(passes) <= steps + 1
    assert all(torch.equal(starts[s], signals[s]) for s in range(1, steps))

    backwards = [hm.step_inputs(run, 0, s)["self_conditioning_logits"] for s in (5, 2, 4)]
    assert all(torch.equal(a, signals[s]) for a, s in zip(backwards, (5, 2, 4), strict=True))
    weight = model.model.decoder.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        weight.mul_(1.5)
    try:
        edited = hm.step_inputs(run, 0, 4)["self_conditioning_logits"]
        run.blocks[0].runtime.signal_memo = None  # the reference: derived from scratch with the edited weight
        fresh = hm.step_inputs(run, 0, 4)["self_conditioning_logits"]
    finally:
        with torch.no_grad():
            weight.div_(1.5)
    assert torch.equal(edited, fresh) and not torch.equal(edited, signals[4])


def test_the_signal_memo_never_outlives_a_hook_or_a_callers_edit(small):
    """Signals derived while a hook could change the passes (a raw torch hook, an attention-pattern
    hook switching the kernel) are not memoised, and editing the returned signal in place changes
    nothing later: after each, every step still re-runs to its recorded logits."""
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 8)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, max_denoising_steps=6, stability_threshold=7)
    torch.manual_seed(1)
    truth = hm.generate(input_ids, record_logits=True, **kwargs)
    torch.manual_seed(1)
    bare = hm.generate(input_ids, **kwargs)

    def exact() -> bool:  # the last step first: it continues from whatever the memo holds
        return all(torch.equal(hm.run_step(bare, 0, s), truth.steps[0][s].logits) for s in (5, 4, 3, 2, 1, 0))

    handle = model.model.decoder.layers[0].register_forward_hook(lambda m, a, out: out * 1.5)
    try:
        hm.step_inputs(bare, 0, 4)
    finally:
        handle.remove()
    assert exact()
    with hm.hooks([("decoder.blocks.0.attn.hook_pattern", lambda t, hook: None)]):
        hm.step_inputs(bare, 0, 5)
    assert exact()
    hm.step_inputs(bare, 0, 4)["self_conditioning_logits"].zero_()
    assert exact()
