"""Instruments against brute-force references on tiny random models.

Logit lens vs the model's own logits and a hand-written unembedding; batched patching sweeps vs
one ``run_with_hooks`` / ``run_step`` per patch; self-patching and full patching invariants;
path patching channels; attribution patching vs finite differences of true patching; probes on
planted signals; every figure renders and saves.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

import diffinterp as di
from conftest import make_prompts
from diffinterp.core.replay import self_conditioning_input
from diffinterp.figures import instruments as ip
from diffinterp.instruments import lens as lz
from diffinterp.instruments import patching as pt
from diffinterp.instruments import probes as pr
from diffinterp.records.files import save_figure


def gen_kwargs(canvas: int, blocks: int = 1, steps: int = 8, stability: int = 1, confidence: float = 0.9) -> dict:
    """Low temperatures; with stability 0 and confidence 0.5 rows stop at different steps (frozen rows)."""
    return dict(
        max_new_tokens=canvas * blocks,
        max_denoising_steps=steps,
        t_min=0.03,
        t_max=0.06,
        stability_threshold=stability,
        confidence_threshold=confidence,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=1.0),
    )


def coupled(
    hm, blocks: int = 1, steps: int = 8, names=None, seeds=(0, 1), bottleneck="continuous", align_steps=True, **settings
):
    config = hm.model.config
    vocab = config.text_config.vocab_size
    ids, mask = make_prompts(vocab, 2, seeds[0])
    ids2, _ = make_prompts(vocab, 2, seeds[1])
    return pt.coupled_runs(
        hm,
        ids,
        ids2,
        names,
        attention_mask=mask,
        bottleneck=bottleneck,
        align_steps=align_steps,
        **gen_kwargs(config.canvas_length, blocks, steps, **settings),
    )


@pytest.fixture(scope="module")
def runs(small):
    _, hm = small
    names = ["decoder.blocks.*.hook_resid_post", "decoder.hook_embed", "decoder.sc.hook_soft_embed"]
    clean, clean_cache, corrupt, corrupt_cache = coupled(hm, names=names, stability=0, confidence=0.5)
    assert not clean.block(0).steps[-1].active.all()  # a row stopped early: frozen rows are exercised
    logits_c, argmax_c = pt.final_outputs(hm, clean)
    logits_k, argmax_k = pt.final_outputs(hm, corrupt)
    metric = pt.LogitDiff(argmax_c, argmax_k)
    return hm, clean, clean_cache, corrupt, corrupt_cache, metric


# ------------------------------------------------------------------ logit lens


def test_logit_lens_last_layer_equals_model_logits(tiny):
    _, model, hm = tiny
    clean, cache, _, _ = coupled(hm, steps=4)
    lens = lz.logit_lens(hm, cache)
    n_layers = hm.text_config.num_hidden_layers
    assert lens.logits.shape == (clean.block(0).n_steps, n_layers, 2, clean.canvas_length, hm.text_config.vocab_size)
    assert torch.equal(lens.logits[:, -1], clean.stack("logits"))
    # an intermediate layer against a hand-written unembedding
    resid = cache["decoder.blocks.0.hook_resid_post", 1]
    h = model.model.decoder.norm(resid) @ model.lm_head.weight.T
    expected = 30.0 * torch.tanh(h.float() / 30.0)
    assert torch.allclose(lens.logits[1, 0], expected, atol=1e-5)
    # restricting to a few tokens gives those columns
    tokens = torch.tensor([3, 1, 7])
    narrow = lz.logit_lens(hm, cache, tokens=tokens)
    assert torch.allclose(narrow.logits, lens.logits[..., tokens], atol=1e-6)
    assert torch.equal(narrow.argmax, tokens[lens.logits[..., tokens].argmax(-1)])


def test_first_prediction_and_settle_steps_match_loops():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 2, 4, 4, generator=generator)
    lens = lz.LogitLens(logits, steps=[0, 1, 2, 3, 4], layers=[0, 1, 2])
    final = torch.randint(0, 4, (2, 4), generator=generator)
    first = lz.first_prediction(lens, final)
    argmax = logits.argmax(-1)
    for b in range(2):
        for p in range(4):
            hits = [(s, layer) for s in range(5) for layer in range(3) if argmax[s, layer, b, p] == final[b, p]]
            assert (int(first.step[b, p]), int(first.layer[b, p])) == (hits[0] if hits else (-1, -1))
            for s in range(5):
                layers = [layer for layer in range(3) if argmax[s, layer, b, p] == final[b, p]]
                assert int(first.per_step[s, b, p]) == (layers[0] if layers else -1)
            stable = [s for s in range(5) if all(argmax[t, -1, b, p] == final[b, p] for t in range(s, 5))]
            assert int(first.stable_step[b, p]) == (stable[0] if stable else -1)


def test_settle_steps_match_loop(runs):
    _, clean, *_ = runs
    argmax = clean.stack("argmax")
    settle = lz.settle_steps(clean)
    for b in range(2):
        for p in range(clean.canvas_length):
            expected = min(
                s for s in range(len(argmax)) if all(argmax[t, b, p] == argmax[-1, b, p] for t in range(s, len(argmax)))
            )
            assert int(settle[b, p]) == expected


# ------------------------------------------------------------------ activation patching


def test_batched_sweep_equals_loop_of_single_patches(tiny):
    name, _, hm = tiny
    clean, cache, corrupt, _ = coupled(hm, steps=6)  # stability 1: the stopping history is rebuilt per step
    _, argmax_c = pt.final_outputs(hm, clean)
    _, argmax_k = pt.final_outputs(hm, corrupt)
    metric = pt.LogitDiff(argmax_c, argmax_k)
    batched = pt.step_layer_sweep(hm, clean, corrupt, cache, metric, batch_size=7)
    loop = pt.step_layer_sweep(hm, clean, corrupt, cache, metric, batched=False)
    assert batched.values.shape == (corrupt.block(0).n_steps, hm.text_config.num_hidden_layers, 2)
    assert torch.allclose(batched.values, loop.values, atol=1e-5), name
    assert torch.equal(batched.corrupt, loop.corrupt)
    assert batched.values.std() > 0


def test_patch_hooks_read_nothing_back_to_the_host(runs, monkeypatch):
    """Inside a batched sweep's patch hooks, and the hook point's check of what they return, no
    tensor value is read on the host (item, int, bool, tolist: each a device sync on a GPU); the
    sweep still equals the loop."""
    from diffinterp.instruments.patching import engine

    hm, clean, cache, corrupt, _, metric = runs
    calls, inside = [], []
    original_hook = engine._Patcher._hook

    def watched_hook(self, tensor, hook):
        inside.append(True)
        try:
            return original_hook(self, tensor, hook)
        finally:
            inside.pop()

    def refuse(name, original):
        def method(self, *args, **kwargs):
            if inside:
                calls.append(name)
            return original(self, *args, **kwargs)

        return method

    from diffinterp.core import hook_points

    original_check = hook_points.check_replacement

    def watched_check(*args, **kwargs):  # the hook point validates each patch's replacement: no sync there either
        inside.append(True)
        try:
            return original_check(*args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(engine._Patcher, "_hook", watched_hook)
    monkeypatch.setattr(hook_points, "check_replacement", watched_check)
    for name in ("item", "tolist", "__int__", "__bool__", "__index__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse(name, getattr(torch.Tensor, name)))
    kwargs = dict(hook="decoder.blocks.1.hook_resid_post", steps=[0, 2], positions=[0, 3])
    batched = pt.step_position_sweep(hm, clean, corrupt, cache, metric, **kwargs)
    assert not calls, f"host reads inside patch hooks: {sorted(set(calls))}"
    monkeypatch.undo()
    loop = pt.step_position_sweep(hm, clean, corrupt, cache, metric, batched=False, **kwargs)
    assert torch.allclose(batched.values, loop.values, atol=1e-5)


def test_a_non_finite_patch_is_reported_by_hook_and_step(runs):
    """A source activation holding NaN makes the batched sweep raise, naming the hook and the step,
    before any forward pass (the patches' per-call finite check is skipped: each source is checked
    once); a user hook's NaN inside a run is still caught at its hook point."""
    hm, clean, cache, corrupt, _, metric = runs
    name = "decoder.blocks.1.hook_resid_post"
    poisoned = di.DenoisingCache()
    for key, tensor in cache.items():
        poisoned.add(*key, tensor)
    bad = cache.get(name, 2, 0).clone()
    bad[0, 0, 0] = float("nan")
    poisoned.add(name, 2, 0, bad)
    with pytest.raises(ValueError, match=rf"source activation of '{name}' at step 2, block 0 holds non-finite"):
        pt.step_position_sweep(hm, clean, corrupt, poisoned, metric, hook=name, steps=[2], positions=[0])
    assert hm.attached_hook_points == []
    # a user hook's NaN at the same hook point is still caught: a vouch covers a sole hook only
    ids, mask = make_prompts(hm.text_config.vocab_size, 2, 0)
    nan_at_step_1 = [(name, lambda t, hook: torch.full_like(t, float("nan")) if hook.step == 1 else None)]
    with pytest.raises(ValueError, match=rf"hook on '{name}' at step 1, block 0 returned non-finite"):
        with hm.hooks(nan_at_step_1), hm.hooks([(name, lambda t, hook: t.clone())], check_finite=False):
            hm.generate(ids, attention_mask=mask, max_new_tokens=8, max_denoising_steps=3)
    assert hm.attached_hook_points == []


def test_step_position_sweep_and_step_mode_equal_loops(runs):
    hm, clean, cache, corrupt, _, metric = runs
    steps = [0, 2, corrupt.block(0).n_steps - 1]
    kwargs = dict(hook="decoder.blocks.1.hook_resid_post", steps=steps, positions=[0, 3, 5])
    for mode in ("free", "step"):
        batched = pt.step_position_sweep(hm, clean, corrupt, cache, metric, mode=mode, **kwargs)
        loop = pt.step_position_sweep(hm, clean, corrupt, cache, metric, mode=mode, batched=False, **kwargs)
        assert batched.values.shape == (3, 3, 2)
        assert torch.allclose(batched.values, loop.values, atol=1e-5), mode


def test_patches_in_a_later_block_equal_loop(small):
    _, hm = small
    clean, cache, corrupt, _ = coupled(hm, blocks=2, steps=4)
    assert len(corrupt.blocks) == 2
    _, argmax_c = pt.final_outputs(hm, clean, 1)
    _, argmax_k = pt.final_outputs(hm, corrupt, 1)
    metric = pt.AnswerProb(argmax_c)
    runs = [pt.Patch(f"decoder.blocks.{layer}.hook_resid_post", step, 1) for step in (0, 2) for layer in (0, 2)]
    batched = pt.run_patches(hm, corrupt, cache, runs, metric, replay=clean, block=1)
    loop = pt.run_patches_loop(hm, corrupt, cache, runs, metric, replay=clean, block=1)
    assert torch.allclose(batched, loop, atol=1e-6)
    with pytest.raises(ValueError, match="run_patches_loop"):
        pt.run_patches(
            hm, corrupt, cache, [pt.Patch("decoder.blocks.0.hook_resid_post", 0, 0)], metric, replay=clean, block=1
        )


def test_patching_a_run_with_itself_changes_nothing(runs):
    hm, clean, clean_cache, _, _, _ = runs
    logits, argmax = pt.final_outputs(hm, clean)
    metric = pt.AnswerProb(argmax)
    reference = metric(logits.unsqueeze(0), argmax.unsqueeze(0))[0]
    patches = [
        pt.Patch(f"decoder.blocks.{layer}.hook_resid_post", step)
        for step in range(clean.block(0).n_steps)
        for layer in range(3)
    ]
    patches.append(pt.Patch("decoder.sc.hook_soft_embed", 2, positions=[1, 4]))
    for mode in ("free", "chain"):
        values = pt.run_patches(hm, clean, clean_cache, patches, metric, replay=clean, mode=mode)
        assert torch.equal(values, reference.expand_as(values)), mode
    same = pt.run_patches(hm, clean, clean_cache, patches, pt.ExactMatch(argmax), replay=clean)
    assert bool((same == 1).all())


def test_patching_every_activation_reproduces_the_clean_output(runs):
    hm, clean, clean_cache, corrupt, _, metric = runs
    _, argmax_c = pt.final_outputs(hm, clean)
    everything = [
        pt.Patch(f"decoder.blocks.{layer}.hook_resid_post", step)
        for step in range(clean.block(0).n_steps)
        for layer in range(hm.text_config.num_hidden_layers)
    ]
    exact = pt.ExactMatch(argmax_c)
    assert pt.run_patches(hm, corrupt, clean_cache, [[]], exact, replay=clean).min() < 1  # the runs differ
    for values in (
        pt.run_patches(hm, corrupt, clean_cache, [everything], exact, replay=clean),
        pt.run_patches_loop(hm, corrupt, clean_cache, [everything], exact, replay=clean),
    ):
        assert bool((values == 1).all())
    restored = pt.run_patches(hm, corrupt, clean_cache, [everything], metric, replay=clean)
    logits_c, _ = pt.final_outputs(hm, clean)
    assert torch.equal(restored[0], metric(logits_c.unsqueeze(0), argmax_c.unsqueeze(0))[0])


def test_unpatched_chain_and_free_runs_reproduce_the_target(runs):
    hm, clean, _, corrupt, corrupt_cache, metric = runs
    logits, argmax = pt.final_outputs(hm, corrupt)
    reference = metric(logits.unsqueeze(0), argmax.unsqueeze(0))[0]
    for mode in ("free", "chain"):
        values = pt.run_patches(hm, corrupt, corrupt_cache, [[]], metric, replay=clean, mode=mode)
        # free mode drops stopped rows from the forward pass: equal up to the rounding of smaller batches
        assert torch.allclose(values[0], reference, atol=1e-6), mode
    # patching the corrupt run's own activations at any step is the identity too
    own = [pt.Patch("decoder.blocks.2.hook_resid_post", s) for s in range(corrupt.block(0).n_steps)]
    values = pt.run_patches(hm, corrupt, corrupt_cache, own, metric, replay=clean)
    # (equal up to the rounding of batched matrix products: up to 7 runs share each forward here)
    assert torch.allclose(values, reference.expand_as(values), atol=1e-6)


def test_chain_mode_at_the_last_step_equals_step_mode(runs):
    hm, clean, cache, corrupt, _, metric = runs
    last = min(clean.block(0).n_steps, corrupt.block(0).n_steps) - 1
    patches = [pt.Patch(f"decoder.blocks.{layer}.hook_resid_post", last) for layer in range(3)]
    step = pt.run_patches(hm, corrupt, cache, patches, metric, mode="step")
    chain = pt.run_patches(hm, corrupt, cache, patches, metric, mode="chain")
    active = corrupt.step(0, last).active  # rows finished earlier keep their earlier logits in chain mode
    assert torch.allclose(step[:, active], chain[:, active], atol=1e-6)


def test_coupled_runs_share_random_draws_and_are_checked(runs, small):
    hm, clean, cache, corrupt, _, metric = runs
    for mine, theirs in zip(corrupt.block(0).steps, clean.block(0).steps, strict=False):
        assert torch.equal(mine.rng_state.cpu, theirs.rng_state.cpu)
    torch.manual_seed(123)
    uncoupled = hm.generate(
        corrupt.prompt_ids, attention_mask=corrupt.attention_mask, record_logits=True, **pt.generation_kwargs(corrupt)
    )
    with pytest.raises(ValueError, match="replay=clean"):
        pt.run_patches(hm, uncoupled, cache, [pt.Patch("decoder.blocks.0.hook_resid_post", 0)], metric, replay=clean)


def test_bad_input_errors_name_the_valid_range(runs):
    hm, clean, cache, corrupt, _, metric = runs
    n = corrupt.block(0).n_steps
    with pytest.raises(IndexError, match=rf"steps 0\.\.{n - 1}"):
        pt.step_layer_sweep(hm, clean, corrupt, cache, metric, steps=[n + 3])
    with pytest.raises(IndexError, match=r"layers 0\.\.2"):
        pt.step_layer_sweep(hm, clean, corrupt, cache, metric, layers=[5])
    with pytest.raises(ValueError, match="valid modes: free, chain, step"):
        pt.run_patches(hm, corrupt, cache, [], metric, mode="teleport")
    with pytest.raises(ValueError, match="replay"):
        pt.run_patches(hm, corrupt, cache, [pt.Patch("decoder.blocks.0.hook_resid_post", 0)], metric)
    with pytest.raises(IndexError, match=r"valid 0\.\.7"):
        pt.run_patches(
            hm, corrupt, cache, [pt.Patch("decoder.blocks.0.hook_resid_post", 0, positions=[9])], metric, replay=clean
        )
    with pytest.raises(KeyError, match="unknown hook"):
        pt.run_patches(hm, corrupt, cache, [pt.Patch("decoder.blocks.0.hook_resid_pots", 0)], metric, replay=clean)
    with pytest.raises(ValueError, match="not a decoder hook"):
        pt.Patch("encoder.blocks.0.hook_resid_post", 0)
    with pytest.raises(KeyError, match="not in this cache"):
        pt.run_patches(hm, corrupt, cache, [pt.Patch("decoder.blocks.0.attn.hook_z", 0)], metric, replay=clean)
    with pytest.raises(ValueError, match="valid channels"):
        pt.path_patching(hm, clean, corrupt, metric, channels=["telepathy"])
    with pytest.raises(ValueError, match="template"):
        pt.step_layer_sweep(hm, clean, corrupt, cache, metric, hook="decoder.blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="is not \\[batch, pos"):
        pt.attribution_patching(hm, cache, corrupt, metric, hook="decoder.blocks.{layer}.attn.hook_pattern")
    with pytest.raises(ValueError, match="differentiable"):
        pt.attribution_patching(hm, cache, corrupt, pt.ExactMatch(corrupt.sequences[:, -8:]))


def test_metrics_on_hand_made_outputs():
    logits = torch.zeros(1, 2, 3, 5)
    logits[0, 0, 1, 4] = 2.0
    logits[0, 0, 1, 2] = -1.0
    clean = torch.tensor([[0, 4, 1], [1, 1, 1]])
    corrupt = torch.tensor([[0, 2, 1], [1, 1, 1]])
    diff = pt.LogitDiff(clean, corrupt)(logits)
    assert torch.allclose(diff, torch.tensor([[3.0, 0.0]]))  # row 1: no differing position scores 0
    prob = pt.AnswerProb(clean, positions=[1])(logits)
    assert torch.allclose(prob[0, 0], torch.softmax(logits[0, 0, 1], -1)[4])
    assert torch.equal(pt.pad_after_eos(torch.tensor([[5, 1, 7, 1]]), 1, 0), torch.tensor([[5, 1, 0, 0]]))
    exact = pt.ExactMatch(torch.tensor([[5, 1, 0, 0], [5, 6, 1, 0]]), eos_id=1, pad_id=0)
    canvas = torch.tensor([[[5, 1, 9, 9], [5, 6, 7, 1]]])
    assert exact(None, canvas).tolist() == [[1.0, 0.0]]
    assert pt.ExactMatch(canvas[0], positions=[0])(None, torch.tensor([[[5, 0, 0, 0], [4, 6, 7, 1]]])).tolist() == [
        [1.0, 0.0]
    ]


# ------------------------------------------------------------------ path patching


def test_path_patching_channels(runs):
    hm, clean, cache, corrupt, _, metric = runs
    accepted = pt.channel_patches(clean, "accepted_tokens", 1)[0].positions
    renoised = pt.channel_patches(clean, "renoised_tokens", 1)[0].positions
    assert torch.equal(accepted ^ renoised, torch.ones_like(accepted)) and accepted.any()
    assert [p.name for p in pt.channel_patches(clean, "all", 1)] == ["decoder.sc.hook_soft_embed", "decoder.hook_embed"]
    steps = [0, 1, 3]
    batched = pt.path_patching(hm, clean, corrupt, metric, steps=steps, clean_cache=cache)
    loop = pt.path_patching(hm, clean, corrupt, metric, steps=steps, clean_cache=cache, batched=False)
    assert batched.values.shape == (len(pt.CHANNELS), 3, 2)
    assert torch.allclose(batched.values, loop.values, atol=1e-5)
    # without the step inputs in the cache, the clean run is regenerated (same draws) to record them
    again = pt.path_patching(hm, clean, corrupt, metric, steps=steps, channels=["self_conditioning", "tokens"])
    assert torch.allclose(again.values, batched.values[[0, 3]], atol=1e-6)
    chain = pt.path_patching(hm, clean, corrupt, metric, steps=steps, clean_cache=cache, mode="chain")
    assert chain.values.shape == (len(pt.CHANNELS), 3, 2)


def test_step_inputs_channel_matches_the_clean_canvas_and_signal(runs):
    """The clean run's hook_embed / soft_embed at s+1 are the embeddings of its canvas and signal."""
    hm, clean, cache, *_ = runs
    decoder = hm.model.model.decoder
    canvas = clean.step(0, 2).canvas_in
    assert torch.equal(cache["decoder.hook_embed", 2], decoder.embed_tokens(canvas))
    signal = self_conditioning_input(hm, clean, 0, 2)
    soft = signal.softmax(-1, dtype=torch.float32) @ decoder.embed_tokens.weight * decoder.embed_tokens.embed_scale
    assert torch.allclose(cache["decoder.sc.hook_soft_embed", 2], soft, atol=1e-5)


# ------------------------------------------------------------------ attribution patching


def test_attribution_is_the_derivative_of_true_chain_patching(runs):
    hm, clean, cache, corrupt, corrupt_cache, metric = runs
    attribution = pt.attribution_patching(hm, cache, corrupt, metric)
    n = corrupt.block(0).n_steps
    assert attribution.values.shape == (n, 3, 2, corrupt.canvas_length)
    base = pt.run_patches(hm, corrupt, corrupt_cache, [[]], metric, mode="chain")[0]
    assert torch.allclose(attribution.metric_value, base, atol=1e-6)
    # finite difference: patch corrupt + eps * (clean - corrupt) at one (step, layer), chain mode
    eps = 1e-2
    for step, layer in ((0, 1), (n // 2, 0), (n - 2, 2)):
        name = f"decoder.blocks.{layer}.hook_resid_post"
        nudged = di.DenoisingCache()
        a, b = corrupt_cache[name, step], cache[name, step]
        nudged.add(name, step, 0, a + eps * (b - a))
        value = pt.run_patches(hm, corrupt, nudged, [pt.Patch(name, step)], metric, mode="chain")[0]
        derivative = (value - base) / eps
        estimate = attribution.per_step_layer()[step, layer]
        assert torch.allclose(derivative, estimate, atol=2e-2 * (1 + estimate.abs().max())), (step, layer)
    true = pt.step_layer_sweep(hm, clean, corrupt, cache, metric, mode="chain")
    assert pt.correlation(attribution.per_step_layer(), true.values - true.corrupt) > 0.5


# ------------------------------------------------------------------ probes


def planted_cache(n=120, steps=3, layers=2, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    cache = di.DenoisingCache()
    for step in range(steps):
        for layer in range(layers):
            act = torch.randn(n, 4, d, generator=generator)
            if (step, layer) == (2, 1):
                act[:, :, 0] += 3.0 * labels[:, None]  # linearly decodable here only
            cache.add(f"decoder.blocks.{layer}.hook_resid_post", step, 0, act)
    return cache, labels


def test_probes_find_a_planted_signal_and_the_control_does_not():
    cache, labels = planted_cache()
    result = pr.train_probes(cache, [f"class{int(v)}" for v in labels], seed=0)
    assert result.accuracy.shape == (3, 2) and result.steps == [0, 1, 2] and result.layers == [0, 1]
    assert result.accuracy[2, 1] > 0.9
    others = result.accuracy.flatten()[:-1]
    assert others.max() < 0.7
    assert result.control[2, 1] < 0.7  # shuffled labels: near chance
    assert result.n_test == 36 and result.classes == ["class0", "class1", "class2"]
    single = pr.train_probes(cache, labels, position=2)
    assert single.accuracy[2, 1] > 0.9
    # a control task: a label the features don't carry
    control = pr.train_probes(cache, labels, control=torch.arange(120) % 2)
    assert control.control_kind == "control task" and control.control[2, 1] < 0.75


def test_probe_errors():
    cache, labels = planted_cache()
    with pytest.raises(ValueError, match="one label per prompt"):
        pr.train_probes(cache, labels[:10])
    with pytest.raises(ValueError, match="at least 2"):
        pr.train_probes(cache, torch.zeros(120))
    with pytest.raises(IndexError, match=r"valid 0\.\.3"):
        pr.train_probes(cache, labels, position=4)
    with pytest.raises(KeyError, match="not in the cache"):
        pr.train_probes(cache, labels, layers=[7])


# ------------------------------------------------------------------ figures


def test_figures_render_and_save(runs, tmp_path):
    hm, clean, cache, corrupt, _, metric = runs
    lens = lz.logit_lens(hm, cache)
    final = clean.block(0).steps[-1].argmax
    first = lz.first_prediction(lens, final)
    sweep = pt.step_layer_sweep(hm, clean, corrupt, cache, metric, steps=[0, 1], mode="step")
    path = pt.path_patching(hm, clean, corrupt, metric, steps=[0, 1], clean_cache=cache)
    attribution = pt.attribution_patching(hm, cache, corrupt, metric)
    probe_cache, labels = planted_cache()
    figures = {
        "lens": ip.logit_lens_grid(lens, final, positions=[0, 1, 2]),
        "sweep": ip.patching_heatmap(sweep),
        "path_heat": ip.patching_heatmap(path, normalised=False),
        "path": ip.path_patching_plot(path),
        "commit": ip.commit_order(clean, first=first),
        "probe": ip.probe_heatmap(pr.train_probes(probe_cache, labels, epochs=50)),
        "attribution": ip.attribution_scatter(attribution.per_step_layer()[:2], sweep.values - sweep.corrupt),
    }
    for name, figure in figures.items():
        written = save_figure(figure, tmp_path / name)
        assert [p.suffix for p in written] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in written)


@pytest.mark.parametrize("bottleneck", ["argmax", "topk:3", "none"])
def test_batched_sweep_equals_loop_under_bottlenecks(small, bottleneck):
    _, hm = small
    clean, cache, corrupt, _ = coupled(hm, steps=5, bottleneck=bottleneck, stability=0, confidence=0.5)
    _, argmax_c = pt.final_outputs(hm, clean)
    _, argmax_k = pt.final_outputs(hm, corrupt)
    metric = pt.LogitDiff(argmax_c, argmax_k)
    batched = pt.step_layer_sweep(hm, clean, corrupt, cache, metric, layers=[0, 2])
    loop = pt.step_layer_sweep(hm, clean, corrupt, cache, metric, layers=[0, 2], batched=False)
    assert torch.allclose(batched.values, loop.values, atol=1e-5)


def test_target_lens_equals_the_full_logit_lens_reduced():
    """The memory-light lens gives the full lens's argmax and target probabilities, chunk size aside."""
    torch.manual_seed(0)
    hm = di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(vocab_size=150, canvas_length=6)))
    ids = torch.randint(4, 150, (3, 5))
    traj, cache = hm.run_with_cache(ids, "decoder.blocks.*.hook_resid_post", max_new_tokens=6, max_denoising_steps=4)
    final = traj.block(0).final_canvas
    full = lz.logit_lens(hm, cache)
    for chunk in (1, 2, 8):
        reduced = lz.target_lens(hm, cache, final, rows_per_chunk=chunk)
        assert torch.equal(reduced.argmax, full.argmax)
        torch.testing.assert_close(reduced.target_prob, full.prob_of(final), rtol=1e-5, atol=1e-7)
    assert torch.equal(lz.first_prediction(reduced, final).step, lz.first_prediction(full, final).step)
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        lz.target_lens(hm, cache, final[:2])


def test_coupled_runs_align_step_counts_by_continuing_both_runs(small):
    """Under adaptive stopping two runs may stop apart; coupled_runs then continues both to the full
    budget, whose first steps are the runs as first generated, and a sweep refuses misaligned runs."""
    _, hm = small
    found = None
    for seed in range(12):  # a prompt pair whose corrupted run takes more steps than the clean one
        runs = coupled(hm, seeds=(2 * seed, 2 * seed + 1), stability=0, confidence=0.5, align_steps=False)
        if runs[2].block(0).n_steps > runs[0].block(0).n_steps:
            found = seed, runs
            break
    assert found is not None, "no misaligned pair among 12 seeds: the test needs one"
    seed, (clean, clean_cache, corrupt, _) = found
    aligned = coupled(hm, seeds=(2 * seed, 2 * seed + 1), stability=0, confidence=0.5)
    assert pt.steps_aligned(aligned[0], aligned[2])
    assert aligned[0].generation["stability_threshold"] == 9  # adaptive stopping off, 8 steps
    for first, continued in ((clean, aligned[0]), (corrupt, aligned[2])):
        for s, step in enumerate(first.block(0).steps):  # each row's steps while it was denoising
            rows = step.active
            assert torch.equal(step.argmax[rows], continued.block(0).steps[s].argmax[rows])
    _, out_c = pt.final_outputs(hm, clean)
    _, out_k = pt.final_outputs(hm, corrupt)
    metric = pt.LogitDiff(out_c, out_k)
    assert not pt.steps_aligned(clean, corrupt)
    with pytest.raises(ValueError, match="coupled_runs"):
        pt.step_layer_sweep(hm, clean, corrupt, clean_cache, metric)
    with pytest.raises(ValueError, match="coupled_runs"):
        pt.attribution_patching(hm, clean_cache, corrupt, metric)
    pt.step_layer_sweep(hm, aligned[0], aligned[2], aligned[1], metric, layers=[0])  # aligned: every step


def test_runs_sharing_a_patch_equal_loop(runs):
    """Several runs patching the same (hook, step), whole or at some positions, and joining at
    different steps: each patch hook call writes the rows of every run it names (the batched
    engine's multi-run masks) exactly as one generation per run does."""
    hm, clean, clean_cache, corrupt, _, metric = runs
    shared = pt.Patch("decoder.blocks.1.hook_resid_post", 2)
    patched = [
        [shared],
        [pt.Patch("decoder.blocks.0.hook_resid_post", 1), shared],
        [shared, pt.Patch("decoder.blocks.2.hook_resid_post", 3)],
        [pt.Patch("decoder.blocks.1.hook_resid_post", 2, positions=[0, 3])],
        [pt.Patch("decoder.blocks.0.hook_resid_post", 1, positions=[2]), shared],
        [pt.Patch("decoder.blocks.2.hook_resid_post", 3)],  # with run 2: two whole-activation runs at one key
    ]
    batched = pt.run_patches(hm, corrupt, clean_cache, patched, metric, replay=clean)
    loop = pt.run_patches_loop(hm, corrupt, clean_cache, patched, metric, replay=clean)
    assert torch.allclose(batched, loop, atol=1e-6)
    assert not torch.equal(batched[0], batched[3])  # positions [0, 3] are not the whole activation
