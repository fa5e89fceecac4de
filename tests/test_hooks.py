"""Hook points: names, activations against independent references, edits, cleanup, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

import diffinterp as di
from tests.conftest import decoder_step_counter, make_prompts, no_torch_hooks, plain_forward_hook

GEN = dict(max_new_tokens=16, max_denoising_steps=4)
PER_LAYER = [
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_moe_out",
    "hook_ffn_out",
    "hook_resid_post",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "attn.hook_pattern",
    "moe.hook_router_probs",
    "moe.hook_topk_weights",
    "moe.hook_topk_idx",
]


def test_hook_names_cover_both_stacks(tiny):
    _, model, hm = tiny
    layers = model.config.text_config.num_hidden_layers
    expected = {
        "decoder.hook_embed",
        "decoder.sc.hook_soft_embed",
        "decoder.sc.hook_signal",
        "decoder.sc.hook_out",
        "decoder.ln_final.hook_normalized",
        "decoder.hook_logits",
        "encoder.hook_embed",
        "encoder.ln_final.hook_normalized",
    }
    for stack in ("decoder", "encoder"):
        expected |= {f"{stack}.blocks.{layer}.{leaf}" for layer in range(layers) for leaf in PER_LAYER}
    assert set(hm.hook_names) == expected


def test_no_hooks_means_untouched_model(small):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 0)
    with hm.hooks(fwd_hooks=[("decoder.blocks.0.hook_resid_post", lambda t, hook: None)]):
        assert not no_torch_hooks(model)
    assert no_torch_hooks(model)
    assert hm.attached_hook_points == []
    assert not any(hasattr(m, "name") for m in model.modules() if not isinstance(m, torch.nn.ModuleList))


def _full_cache(hm, input_ids, mask, **kwargs):
    torch.manual_seed(0)
    return hm.run_with_cache(input_ids, attention_mask=mask, **GEN, **kwargs)


def test_activations_satisfy_the_layer_algebra(tiny):
    """Each hook against a recomputation from the others with the HF modules' own weights."""
    _, model, hm = tiny
    input_ids, mask = make_prompts(model.config.text_config.vocab_size, 2, 1)
    trajectory, cache = _full_cache(hm, input_ids, mask)
    decoder = model.model.decoder
    for step in range(trajectory.blocks[0].n_steps):

        def get(name, step=step):
            return cache["decoder." + name, step]

        assert torch.equal(get("blocks.0.hook_resid_pre"), get("sc.hook_out"))
        for index, layer in enumerate(decoder.layers):
            name = f"blocks.{index}."
            resid_pre, resid_mid = get(name + "hook_resid_pre"), get(name + "hook_resid_mid")
            torch.testing.assert_close(resid_mid, resid_pre + get(name + "hook_attn_out"), rtol=0, atol=0)
            expected_post = (resid_mid + get(name + "hook_ffn_out")) * layer.layer_scalar
            torch.testing.assert_close(get(name + "hook_resid_post"), expected_post, rtol=0, atol=0)
            ffn = layer.post_feedforward_layernorm(get(name + "hook_mlp_out") + get(name + "hook_moe_out"))
            torch.testing.assert_close(get(name + "hook_ffn_out"), ffn, rtol=0, atol=0)
            z = get(name + "attn.hook_z")
            attn_out = layer.post_attention_layernorm(layer.self_attn.o_proj(z.flatten(-2)))
            torch.testing.assert_close(get(name + "hook_attn_out"), attn_out, rtol=0, atol=0)
            pattern = get(name + "attn.hook_pattern")
            torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
            probs = get(name + "moe.hook_router_probs")
            top = torch.topk(probs, model.config.text_config.top_k_experts, dim=-1).indices
            assert torch.equal(get(name + "moe.hook_topk_idx"), top)
            if index + 1 < len(decoder.layers):
                assert torch.equal(get(name + "hook_resid_post"), get(f"blocks.{index + 1}.hook_resid_pre"))
        normalized = get("ln_final.hook_normalized")
        assert torch.equal(normalized, decoder.norm(get(f"blocks.{len(decoder.layers) - 1}.hook_resid_post")))
        logits = torch.tanh(model.lm_head(normalized).float() / 30.0) * 30.0
        torch.testing.assert_close(get("hook_logits"), logits, rtol=0, atol=1e-6)
    assert no_torch_hooks(model)
    assert model.config._attn_implementation == "sdpa"


def test_logits_hook_equals_recorded_logits_and_steps_are_reported(small):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 2)
    seen = []
    torch.manual_seed(0)
    trajectory, cache = hm.run_with_cache(
        input_ids,
        names_filter=["decoder.hook_logits", "encoder.hook_embed"],
        attention_mask=mask,
        record_logits=True,
        **GEN,
    )
    for block in trajectory.blocks:
        for step in block.steps:
            assert torch.equal(cache["decoder.hook_logits", step.step, block.block], step.logits)
            seen.append((block.block, step.step))
    assert [(b, s) for (n, s, b) in cache.keys() if n == "decoder.hook_logits"] == seen
    assert [(s, b) for (n, s, b) in cache.keys() if n == "encoder.hook_embed"] == [(None, 0), (None, 1)]
    assert cache["encoder.hook_embed"].shape == (2, 5, 64)
    assert cache.get("encoder.hook_embed", block=1).shape == (2, 8, 64)


@pytest.mark.parametrize(
    "hook_name,module_path",
    [
        ("decoder.blocks.1.hook_mlp_out", "layers.1.post_feedforward_layernorm_1"),
        ("decoder.blocks.0.hook_attn_out", "layers.0.post_attention_layernorm"),
        ("decoder.blocks.2.hook_resid_post", "layers.2"),
    ],
)
def test_zero_ablation_equals_a_plain_torch_hook(tiny, hook_name, module_path):
    name, model, hm = tiny
    input_ids, mask = make_prompts(model.config.text_config.vocab_size, 2, 3)
    kwargs = dict(
        attention_mask=mask, max_new_tokens=model.config.canvas_length, max_denoising_steps=5, record_logits=True
    )
    torch.manual_seed(4)
    clean = hm.generate(input_ids, **kwargs)
    torch.manual_seed(4)
    ablated = hm.run_with_hooks(
        input_ids, fwd_hooks=[(hook_name, lambda t, hook: torch.zeros_like(t))], steps=[2], **kwargs
    )

    module = model.model.decoder.get_submodule(module_path)
    with decoder_step_counter(model) as state:
        with plain_forward_hook(module, lambda _m, _i, out: torch.zeros_like(out) if state["calls"] == 2 else None):
            torch.manual_seed(4)
            reference = hm.generate(input_ids, **kwargs)
    assert torch.equal(ablated.sequences, reference.sequences)
    for step in range(len(reference.steps[0])):
        assert torch.equal(ablated.steps[0][step].logits, reference.steps[0][step].logits), step
    assert torch.equal(ablated.steps[0][1].logits, clean.steps[0][1].logits)
    assert not torch.equal(ablated.steps[0][2].logits, clean.steps[0][2].logits), "the ablation changed nothing"


def test_resid_mid_replacement_reaches_every_reader(small):
    """A replaced resid_mid feeds the router, the FFN and the residual add (written in place)."""
    model, hm = small
    input_ids, mask = make_prompts(96, 1, 5)
    replacement = {}

    def replace(t, hook):
        replacement["value"] = torch.randn_like(t)
        return replacement["value"]

    captured = {}
    names = [
        "decoder.blocks.1.hook_ffn_out",
        "decoder.blocks.1.hook_resid_post",
        "decoder.blocks.1.moe.hook_router_probs",
    ]
    hooks = [("decoder.blocks.1.hook_resid_mid", replace)] + [
        (n, lambda t, hook: captured.__setitem__(hook.name, t.clone())) for n in names
    ]
    torch.manual_seed(0)
    hm.run_with_hooks(input_ids, fwd_hooks=hooks, steps=[1], attention_mask=mask, **GEN)
    layer = model.model.decoder.layers[1]
    x = replacement["value"]
    expected_post = (x + captured[names[0]]) * layer.layer_scalar
    assert torch.equal(captured[names[1]], expected_post)
    router_probs = layer.router(x.reshape(-1, x.shape[-1]))[0].view(*x.shape[:2], -1)
    assert torch.equal(captured[names[2]], router_probs)


def test_positions_limit_an_edit(small):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 6)
    name = "decoder.blocks.0.hook_resid_pre"

    def run(edit_hooks):
        seen = {}
        record = [(name, lambda t, hook: seen.__setitem__((hook.block, hook.step), t.clone()))]
        torch.manual_seed(0)
        with hm.hooks(edit_hooks, steps=[1], positions=[2, 5]), hm.hooks(record):
            hm.generate(input_ids, attention_mask=mask, **GEN)
        return seen

    clean = run([])
    edited = run([(name, lambda t, hook: torch.zeros_like(t))])
    untouched = [p for p in range(8) if p not in (2, 5)]
    assert (edited[0, 1][:, [2, 5]] == 0).all() and (edited[1, 1][:, [2, 5]] == 0).all()
    assert (clean[0, 1][:, [2, 5]] != 0).any()
    # Block 0 up to the edit is the clean run: only the targeted positions differ.
    assert torch.equal(edited[0, 1][:, untouched], clean[0, 1][:, untouched])
    assert torch.equal(edited[0, 0], clean[0, 0])


def test_pattern_edit_changes_the_output_consistently(small):
    model, _ = small
    hm = di.HookedDiffusionGemma(model)  # fresh wrapper: it warns once about eager attention
    input_ids, mask = make_prompts(96, 1, 7)
    captured = {}

    def uniform(pattern, hook):
        return torch.full_like(pattern, 1.0 / pattern.shape[-1])

    hooks = [
        ("decoder.blocks.2.attn.hook_pattern", uniform),
        ("decoder.blocks.2.attn.hook_v", lambda t, hook: captured.__setitem__("v", t.clone())),
        ("decoder.blocks.2.attn.hook_z", lambda t, hook: captured.__setitem__("z", t.clone())),
    ]
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="attention-pattern hooks need eager attention"):
        hm.run_with_hooks(input_ids, fwd_hooks=hooks, steps=[0], attention_mask=mask, **GEN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per model, not on every run
        hm.run_with_hooks(input_ids, fwd_hooks=hooks, steps=[0], attention_mask=mask, **GEN)
    # Uniform attention over the visible keys: z is the mean of the (head-shared) values.
    # The canvas's own values are the last `pos` keys; the prompt's are cached values.
    z = captured["z"]
    assert torch.allclose(z[:, 0], z[:, -1])  # every query position gets the same mixture
    assert model.config._attn_implementation == "sdpa"


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_no_hook_survives_an_error_mid_run(small, error):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 8)

    def explode(t, hook):
        if hook.step == 2:
            raise error("stop")

    hooks = [
        ("decoder.blocks.1.attn.hook_pattern", lambda t, hook: None),
        ("decoder.blocks.0.hook_resid_mid", explode),
        ("encoder.blocks.0.hook_resid_post", lambda t, hook: None),
    ]
    with pytest.raises(error):
        hm.run_with_hooks(input_ids, fwd_hooks=hooks, attention_mask=mask, **GEN)
    assert no_torch_hooks(model)
    assert hm.attached_hook_points == []
    assert all(not p.fwd_hooks and not p.bwd_hooks for p in hm.hook_dict.values())
    assert model.config._attn_implementation == "sdpa"
    assert hm.context.step is None and hm.context.block is None
    torch.manual_seed(0)
    again = hm.generate(input_ids, attention_mask=mask, **GEN)
    torch.manual_seed(0)
    assert torch.equal(again.sequences, model.generate(input_ids, attention_mask=mask, **GEN).sequences)


def test_unknown_hook_name_suggests_the_nearest(small):
    _, hm = small
    with pytest.raises(KeyError, match="did you mean 'decoder.blocks.2.hook_resid_pre'"):
        hm.run_with_hooks(torch.ones(1, 3, dtype=torch.long), fwd_hooks=[("decoder.blocks.2.hook_resid", print)])
    with pytest.raises(KeyError, match="matched no hook point"):
        hm.resolve_names("decoder.blocks.*.hook_nothing")
    assert len(hm.resolve_names("decoder.blocks.*.hook_resid_post")) == 3


def test_wrong_replacement_shape_names_both_shapes(small):
    model, hm = small
    input_ids, _ = make_prompts(96, 1, 0)
    with pytest.raises(ValueError, match=r"returned shape \(1, 7, 64\); expected \(1, 8, 64\)"):
        hm.run_with_hooks(input_ids, fwd_hooks=[("decoder.blocks.0.hook_mlp_out", lambda t, hook: t[:, :7])], **GEN)
    assert no_torch_hooks(model)


def test_out_of_range_steps_and_blocks_say_the_valid_range(small):
    _, hm = small
    input_ids, _ = make_prompts(96, 1, 0)
    with pytest.raises(ValueError, match=r"step 9, out of range.*valid steps 0\.\.3"):
        hm.run_with_hooks(input_ids, fwd_hooks=[("decoder.hook_embed", print)], steps=[9], **GEN)
    with pytest.raises(ValueError, match=r"block 5, out of range.*valid blocks 0\.\.1"):
        hm.run_with_hooks(input_ids, fwd_hooks=[("decoder.hook_embed", print)], blocks=[5], **GEN)
    torch.manual_seed(0)
    trajectory, cache = hm.run_with_cache(input_ids, names_filter="decoder.hook_embed", **GEN)
    with pytest.raises(KeyError, match=r"recorded steps: 0\.\.3"):
        cache["decoder.hook_embed", 7]
    with pytest.raises(IndexError, match=r"valid 0\.\.3"):
        trajectory.step(0, 4)
    with pytest.raises(IndexError, match=r"blocks 0\.\.1"):
        hm.step_inputs(trajectory, 2, 0)


def test_hooks_see_step_and_block_and_can_target_blocks(small):
    _, hm = small
    input_ids, _ = make_prompts(96, 1, 0)
    fired = []
    torch.manual_seed(0)
    hm.run_with_hooks(
        input_ids,
        fwd_hooks=[("decoder.blocks.0.hook_resid_pre", lambda t, hook: fired.append((hook.block, hook.step)))],
        blocks=[1],
        **GEN,
    )
    assert fired == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_nnsight_traces_a_recorded_step(small):
    """The same step inputs drive nnsight: NNsight(hm.model) reproduces the recorded logits."""
    from nnsight import NNsight

    model, hm = small
    input_ids, mask = make_prompts(96, 2, 9)
    torch.manual_seed(0)
    trajectory, cache = hm.run_with_cache(
        input_ids, names_filter="decoder.blocks.1.hook_resid_post", attention_mask=mask, record_logits=True, **GEN
    )
    traced = NNsight(model)
    with traced.trace(**hm.step_inputs(trajectory, 1, 2)):
        resid = traced.model.decoder.layers[1].output.save()
        logits = traced.output.logits.save()
    assert torch.equal(logits, trajectory.steps[1][2].logits)
    assert torch.equal(resid, cache["decoder.blocks.1.hook_resid_post", 2, 1])


def test_run_step_reruns_with_hooks(small):
    model, hm = small
    input_ids, _ = make_prompts(96, 1, 1)
    torch.manual_seed(0)
    trajectory = hm.generate(input_ids, record_logits=True, **GEN)
    assert torch.equal(hm.run_step(trajectory, 0, 3), trajectory.steps[0][3].logits)
    ablated = hm.run_step(trajectory, 0, 3, fwd_hooks=[("decoder.blocks.0.hook_mlp_out", lambda t, hook: t * 0)])
    assert not torch.equal(ablated, trajectory.steps[0][3].logits)
    assert no_torch_hooks(model)


def test_wrapping_requires_a_diffusion_gemma():
    with pytest.raises(TypeError, match="DiffusionGemmaForBlockDiffusion"):
        di.HookedDiffusionGemma(torch.nn.Linear(2, 2))


def test_a_tap_reads_what_a_plain_torch_hook_reads_and_what_an_edit_left(small):
    """A tap sees the HF module's output (a hand-written hook's capture), after any user edit, at
    the steps it targets; its return value changes nothing."""
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 5)
    kwargs = dict(attention_mask=mask, **GEN)
    name = "decoder.blocks.1.hook_resid_post"
    captured = {}
    layer = model.model.decoder.layers[1]
    with decoder_step_counter(model) as state:
        with plain_forward_hook(layer, lambda _m, _i, out: captured.setdefault(state["calls"], out.detach().clone())):
            torch.manual_seed(2)
            reference = hm.generate(input_ids, **kwargs)

    seen = {}

    def tap(tensor, hook):
        seen[(hook.step, hook.block)] = tensor.clone()
        return torch.zeros_like(tensor)  # ignored: a tap cannot replace

    torch.manual_seed(2)
    with hm.taps([(name, tap)], steps=[1, 3]):
        assert name in hm.attached_hook_points
        tapped = hm.generate(input_ids, **kwargs)
    assert hm.attached_hook_points == [] and no_torch_hooks(model)
    assert torch.equal(tapped.sequences, reference.sequences)
    assert sorted(seen) == [(1, 0), (1, 1), (3, 0), (3, 1)]
    offsets = [sum(len(steps) for steps in reference.steps[:block]) for block in range(len(reference.steps))]
    for (step, block), tensor in seen.items():
        assert torch.equal(tensor, captured[offsets[block] + step]), (step, block)

    edited = {}
    torch.manual_seed(2)
    with (
        hm.hooks([(name, lambda t, hook: t * 0.5)], steps=[1]),
        hm.taps([(name, lambda t, hook: edited.setdefault(hook.step, t.clone()))]),
    ):
        hm.generate(input_ids, **kwargs)
    assert 1 in edited and 0 in edited
    assert torch.equal(edited[0], captured[0])  # no edit at step 0
    torch.manual_seed(2)
    unedited_step1 = {}
    with hm.hooks([(name, lambda t, hook: unedited_step1.setdefault(hook.step, t.clone()) * 0.5)], steps=[1]):
        hm.generate(input_ids, **kwargs)
    assert torch.equal(edited[1], unedited_step1[1] * 0.5)  # the tap saw the edited activation


def test_a_tap_that_raises_leaves_nothing_attached(small):
    model, hm = small
    input_ids, mask = make_prompts(96, 2, 8)

    def explode(tensor, hook):
        if hook.step == 2:
            raise Boom("stop")

    with pytest.raises(Boom):
        with hm.taps([("decoder.blocks.0.hook_resid_mid", explode), ("decoder.blocks.1.attn.hook_pattern", explode)]):
            hm.generate(input_ids, attention_mask=mask, **GEN)
    assert no_torch_hooks(model) and hm.attached_hook_points == []
    assert all(not p.taps for p in hm.hook_dict.values())
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(TypeError, match="must be callable"):
        with hm.taps([("decoder.blocks.0.hook_resid_mid", "not a function")]):
            pass
    assert hm.attached_hook_points == []


def test_a_vouched_sole_hook_skips_the_finite_check_and_an_unvouched_one_does_not(small):
    """``hooks(check_finite=False)`` is a promise the hook point takes at its word when the hook is
    alone there; without it the same NaN replacement is refused, naming the hook."""
    model, hm = small
    ids, mask = make_prompts(96, 2, 1)
    torch.manual_seed(0)
    trajectory = hm.generate(ids, attention_mask=mask, **GEN)
    inputs = hm.step_inputs(trajectory, 0, 1)
    name = "decoder.blocks.0.hook_resid_post"
    poison = [(name, lambda t, hook: torch.full_like(t, float("nan")))]
    with pytest.raises(ValueError, match=f"hook on '{name}' returned non-finite"):
        with hm.hooks(poison), torch.no_grad():
            model(**inputs)
    with hm.hooks(poison, check_finite=False), torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isnan(logits).all()  # taken at its word: the promise was false, and nothing checked it
    assert hm.attached_hook_points == []


def test_an_aborted_runs_nan_flags_do_not_blame_the_next_run(small):
    model, hm = small
    ids, mask = make_prompts(96, 2, 2)

    def stop(tensor, hook):
        raise Boom("stop")  # aborts the forward pass after layer 0 queued its flag, before anything read it

    hooks = [
        ("decoder.blocks.0.hook_mlp_out", lambda t, hook: torch.full_like(t, float("inf"))),
        ("decoder.blocks.1.hook_resid_post", stop),
    ]
    with pytest.raises(Boom):
        hm.run_with_hooks(ids, fwd_hooks=hooks, attention_mask=mask, **GEN)
    assert hm.context.pending == []
    torch.manual_seed(0)
    clean = hm.generate(ids, attention_mask=mask, **GEN)  # no stale flag raises here
    torch.manual_seed(0)
    assert torch.equal(clean.sequences, model.generate(ids, attention_mask=mask, **GEN).sequences)


def test_a_tap_whose_attachment_fails_is_not_left_behind(small):
    from diffinterp.core.hook_points import RunContext, StepHookPoint

    def failing_attach(_point):
        raise RuntimeError("no module to hook")

    point = StepHookPoint(RunContext(), failing_attach)
    with pytest.raises(RuntimeError, match="no module to hook"):
        point.add_tap(lambda t, hook: None)
    assert point.taps == () and not point.is_attached


def test_a_tap_that_removes_itself_does_not_hide_the_activation_from_the_next_tap(small):
    _, hm = small
    ids, mask = make_prompts(96, 1, 3)
    point = hm.hook_dict["decoder.blocks.0.hook_resid_post"]
    seen = []
    removers = {}

    def once(tensor, hook):
        removers["once"]()

    removers["once"] = point.add_tap(once)
    remove_second = point.add_tap(lambda t, hook: seen.append(hook.step))
    try:
        with hm.context.claim():
            hm.generate(ids, attention_mask=mask, **GEN)
    finally:
        remove_second()
    assert seen[:2] == [0, 1] and hm.attached_hook_points == []


def test_a_tap_that_reenters_the_model_is_named_in_the_error(small):
    from diffinterp.core.hook_points import ReentrantRunError

    _, hm = small
    ids, mask = make_prompts(96, 1, 4)
    name = "decoder.blocks.0.hook_resid_post"

    def reenter(tensor, hook):
        hm.generate(ids, attention_mask=mask, **GEN)

    with pytest.raises(ReentrantRunError, match=f"from a hook on '{name}'"):
        with hm.taps([(name, reenter)]):
            hm.generate(ids, attention_mask=mask, **GEN)
    assert hm.attached_hook_points == []


def test_router_hooks_share_one_shape_recorder_and_each_reads_the_router(small):
    """The three router hook points of a layer share one pre-hook on it (attached with the first,
    removed with the last, in any order), and each reads the router's own output: a hand-written
    hook on the router, reshaped to [batch, pos, ·], is the reference."""
    model, hm = small
    input_ids, mask = make_prompts(97, 2, 6)
    kwargs = dict(attention_mask=mask, **GEN)
    layer = model.model.decoder.layers[1]
    prefix = "decoder.blocks.1.moe."
    captured = []
    with decoder_step_counter(model) as state:
        with plain_forward_hook(layer.router, lambda _m, _i, out: captured.append([o.detach().clone() for o in out])):
            torch.manual_seed(4)
            hm.generate(input_ids, **kwargs)
    steps = state["calls"] + 1
    probs = [c for c in captured if c[0].shape[0] == input_ids.shape[0] * model.config.canvas_length]
    assert len(probs) == steps  # one router call per decoder step

    seen: dict[str, list[torch.Tensor]] = {"hook_router_probs": [], "hook_topk_weights": [], "hook_topk_idx": []}

    def hooks_on(*names):
        return hm.taps([(prefix + n, lambda t, hook, n=n: seen[n].append(t.clone())) for n in names])

    with hooks_on("hook_topk_idx"):
        assert len(layer._forward_pre_hooks) == 1
        with hooks_on("hook_router_probs", "hook_topk_weights"):
            assert len(layer._forward_pre_hooks) == 1  # shared, not one per router hook point
            torch.manual_seed(4)
            hm.generate(input_ids, **kwargs)
        assert len(layer._forward_pre_hooks) == 1  # the remaining point still records the shape
        torch.manual_seed(4)
        hm.generate(input_ids, **kwargs)
    assert no_torch_hooks(model)
    batch, canvas = input_ids.shape[0], model.config.canvas_length
    for index, name in enumerate(("hook_router_probs", "hook_topk_weights", "hook_topk_idx")):
        reference = [out[index].view(batch, canvas, -1) for out in probs]
        expected = reference if name != "hook_topk_idx" else reference + reference
        assert len(seen[name]) == len(expected), name
        for tensor, ref in zip(seen[name], expected, strict=True):
            assert torch.equal(tensor, ref), name
