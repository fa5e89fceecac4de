"""TransformerLens-style conveniences against direct computations.

Token strings against the tokenizer; accumulated / decomposed residual streams and per-head
results against the cached activations they must sum to (with layer scalars set away from 1, so
the scaling is exercised); ``apply_ln`` against ``decoder.norm``; stacking over layers against the
entries; per-step statistics over active rows against a loop; attention key labels against the
pattern's shape and the prompt; the attention figure renders with whole token labels.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import diffinterp as di
from conftest import TINY_CONFIGS, make_prompts
from diffinterp.figures import instruments as ip

NAMES = [
    "decoder.sc.hook_out",
    "decoder.blocks.*.hook_resid_pre",
    "decoder.blocks.*.hook_resid_mid",
    "decoder.blocks.*.hook_resid_post",
    "decoder.blocks.*.hook_attn_out",
    "decoder.blocks.*.hook_ffn_out",
    "decoder.blocks.*.attn.hook_z",
    "decoder.blocks.*.attn.hook_pattern",
    "decoder.ln_final.hook_normalized",
    "decoder.hook_logits",
]


@pytest.fixture(scope="module")
def scaled_run():
    """A tiny model whose layer scalars are not 1, and one cached run of it (fp32, every hook above)."""
    config = di.tiny_config(**TINY_CONFIGS["l4-e8k1-c6-v64"])
    model = copy.deepcopy(di.tiny_model(config, seed=0))
    for index, layer in enumerate(model.model.decoder.layers):
        layer.layer_scalar.fill_(0.5 + 0.4 * index)
    hm = di.HookedDiffusionGemma(model)
    ids, mask = make_prompts(config.text_config.vocab_size, 2, 0)
    torch.manual_seed(0)
    traj, cache = hm.run_with_cache(ids, NAMES, attention_mask=mask, max_denoising_steps=4, t_min=0.3, t_max=0.6)
    return hm, traj, cache


def test_to_str_tokens_and_to_string_match_the_tokenizer():
    hm = di.load_model("carry")
    prompt = "carry 1 9 9 8 7 7 2 5 1 3"
    ids = hm.tokenizer(prompt)["input_ids"]
    assert hm.to_str_tokens(prompt) == hm.tokenizer.convert_ids_to_tokens(ids)
    assert hm.to_str_tokens(prompt)[-10:] == prompt.split()[1:]
    assert hm.to_str_tokens(torch.tensor(ids)) == hm.to_str_tokens(prompt)
    batch, _ = hm.to_tokens([prompt, "carry 1 2 3 4 5 6 7 8 9 0"])
    assert hm.to_str_tokens(batch) == [hm.tokenizer.convert_ids_to_tokens(row.tolist()) for row in batch]
    assert hm.to_string(torch.tensor(ids), skip_special_tokens=True) == hm.tokenizer.decode(
        ids, skip_special_tokens=True
    )
    assert hm.to_string(batch) == [hm.tokenizer.decode(row.tolist()) for row in batch]
    with pytest.raises(ValueError, match="string or integer ids"):
        hm.to_str_tokens(torch.zeros(2, 2, 2, dtype=torch.long))


def test_decompose_resid_sums_to_the_residual_and_its_norm(scaled_run):
    hm, traj, cache = scaled_run
    n = hm.text_config.num_hidden_layers
    for step in range(traj.block(0).n_steps):
        stack, labels = hm.decompose_resid(cache, step, return_labels=True)
        assert labels[0] == "sc_out" and labels[1:3] == ["0_attn_out", "0_ffn_out"] and len(labels) == 1 + 2 * n
        final = cache[f"decoder.blocks.{n - 1}.hook_resid_post", step]
        torch.testing.assert_close(stack.sum(0), final.float(), atol=1e-4, rtol=1e-4)
        middle = hm.decompose_resid(cache, step, layer=2)
        torch.testing.assert_close(
            middle.sum(0), cache["decoder.blocks.2.hook_resid_pre", step].float(), atol=1e-4, rtol=1e-4
        )
        normed = hm.decompose_resid(cache, step, apply_ln=True)
        torch.testing.assert_close(
            normed.sum(0), cache["decoder.ln_final.hook_normalized", step].float(), atol=1e-4, rtol=1e-4
        )
    # a hand-computed term: layer 0's attn_out passed through every layer scalar after it
    scalars = [float(layer.layer_scalar) for layer in hm.model.model.decoder.layers]
    expected = cache["decoder.blocks.0.hook_attn_out", 1].float() * float(np.prod(scalars))
    torch.testing.assert_close(hm.decompose_resid(cache, 1)[1], expected)
    with pytest.raises(ValueError, match="layer=None"):
        hm.decompose_resid(cache, 0, layer=1, apply_ln=True)


def test_accumulated_resid_reads_the_cache_and_applies_the_final_norm_per_entry(scaled_run):
    hm, traj, cache = scaled_run
    n = hm.text_config.num_hidden_layers
    stack, labels = hm.accumulated_resid(cache, 2, incl_mid=True, return_labels=True)
    assert labels == [x for i in range(n) for x in (f"{i}_pre", f"{i}_mid")] + ["final_post"]
    assert torch.equal(stack[0], cache["decoder.blocks.0.hook_resid_pre", 2])
    assert torch.equal(stack[3], cache["decoder.blocks.1.hook_resid_mid", 2])
    assert torch.equal(stack[-1], cache[f"decoder.blocks.{n - 1}.hook_resid_post", 2])
    normed = hm.accumulated_resid(cache, 2, apply_ln=True, positions=[0, 3])
    norm = hm.model.model.decoder.norm
    for index in range(n):
        direct = norm(cache[f"decoder.blocks.{index}.hook_resid_pre", 2][:, [0, 3]])
        torch.testing.assert_close(normed[index], direct.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normed[-1], cache["decoder.ln_final.hook_normalized", 2][:, [0, 3]].float())
    with pytest.raises(KeyError, match="hook_resid_pre"):
        hm.accumulated_resid(cache.filter("decoder.blocks.*.hook_resid_post"), 0)


def test_head_results_are_the_o_proj_slices_and_sum_to_attn_out(scaled_run):
    hm, traj, cache = scaled_run
    n = hm.text_config.num_hidden_layers
    for layer in range(n):
        z = cache[f"decoder.blocks.{layer}.attn.hook_z", 1].float()
        w_o = hm.model.model.decoder.layers[layer].self_attn.o_proj.weight.float()
        d_head = z.shape[-1]
        raw = hm.head_results(cache, 1, layer, residual=False)
        for h in range(z.shape[2]):  # a head's columns of o_proj, one at a time
            torch.testing.assert_close(raw[:, :, h], z[:, :, h] @ w_o[:, h * d_head : (h + 1) * d_head].T)
        torch.testing.assert_close(raw.sum(2), hm.model.model.decoder.layers[layer].self_attn.o_proj(z.flatten(2)))
        heads = hm.head_results(cache, 1, layer)
        torch.testing.assert_close(
            heads.sum(2), cache[f"decoder.blocks.{layer}.hook_attn_out", 1].float(), atol=1e-5, rtol=1e-5
        )
    stack, labels = hm.stack_head_results(cache, 1, return_labels=True)
    n_heads = hm.text_config.num_attention_heads
    assert labels[: n_heads + 1] == [f"L0H{h}" for h in range(n_heads)] + ["L1H0"] and stack.shape[0] == n * n_heads
    decomposed = hm.decompose_resid(cache, 1)  # the heads of layer l sum to its scaled attn_out term
    for layer in range(n):
        torch.testing.assert_close(
            stack[layer * n_heads : (layer + 1) * n_heads].sum(0), decomposed[1 + 2 * layer], atol=1e-5, rtol=1e-5
        )
    normed_heads = hm.stack_head_results(cache, 1, apply_ln=True)
    normed_terms = hm.decompose_resid(cache, 1, apply_ln=True)  # the same final-norm scale for both
    for layer in range(n):
        torch.testing.assert_close(
            normed_heads[layer * n_heads : (layer + 1) * n_heads].sum(0),
            normed_terms[1 + 2 * layer],
            atol=1e-5,
            rtol=1e-5,
        )
    logits_direct = normed_heads @ hm.model.lm_head.weight.float().T
    assert logits_direct.shape == (n * n_heads, 2, traj.canvas_length, hm.text_config.vocab_size)


def test_stack_activation_stacks_every_layer(scaled_run):
    hm, traj, cache = scaled_run
    n = hm.text_config.num_hidden_layers
    expected = torch.stack([cache[f"decoder.blocks.{i}.hook_resid_post", 3] for i in range(n)])
    assert torch.equal(cache.stack_activation("decoder.blocks.{layer}.hook_resid_post", 3), expected)
    assert torch.equal(cache.stack_activation("resid_post", 3), expected)
    assert torch.equal(cache.stack_activation("hook_resid_post", 3, layers=[1, 2]), expected[1:3])
    sliding = [i for i, kind in enumerate(hm.text_config.layer_types) if kind == "sliding_attention"]
    assert cache.stack_activation("attn.hook_z", 0, layers=sliding).shape[0] == len(sliding)
    with pytest.raises(ValueError, match="pass layers= whose shapes agree"):
        cache.stack_activation("attn.hook_z", 0)  # sliding and full layers' heads differ in size
    with pytest.raises(KeyError, match="give a step"):
        cache.stack_activation("resid_post")
    with pytest.raises(KeyError, match="no layer"):
        cache.stack_activation("hook_mlp_out", 0)


def test_active_rows_helpers_equal_a_loop():
    hm = di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(), seed=0))
    ids, mask = make_prompts(hm.text_config.vocab_size, 2, 3)
    torch.manual_seed(0)
    traj = hm.generate(
        ids,
        attention_mask=mask,
        max_denoising_steps=8,
        t_min=0.03,
        t_max=0.06,
        stability_threshold=0,
        confidence_threshold=0.5,
    )
    active = traj.stack("active")
    assert not active.all(), "the test needs a row that stops early"
    entropy = traj.stack("entropy")
    mean = di.active_mean(entropy, active)
    for step in range(active.shape[0]):
        rows = [r for r in range(active.shape[1]) if active[step, r]]
        expected = (
            torch.stack([entropy[step, r] for r in rows]).mean(0)
            if rows
            else torch.full_like(entropy[0, 0], float("nan"))
        )
        torch.testing.assert_close(mean[step], expected, equal_nan=True)
    masked = traj.stack("entropy", active_only=True)
    assert masked[~active].isnan().all() and torch.equal(masked[active], entropy[active])
    spiked = entropy.clone()
    spiked[active] = float("inf")  # a non-finite value in an active row stays in the mean
    assert di.active_mean(spiked, active)[0].isinf().all()
    with pytest.raises(TypeError, match="floating-point"):
        traj.stack("argmax", active_only=True)
    with pytest.raises(ValueError, match="steps, batch"):
        di.active_mean(entropy[:, :1], active)


def test_attention_keys_follow_the_pattern_layout():
    """Prefix first, then the canvas; a sliding layer keeps only the last window - 1 prefix tokens."""
    config = di.tiny_config(**TINY_CONFIGS["l4-e8k1-c6-v64"])  # sliding window 4
    hm = di.HookedDiffusionGemma(di.tiny_model(config, seed=0))
    ids = torch.arange(3, 12)[None]  # a 9-token prompt: longer than the window
    torch.manual_seed(0)
    traj, cache = hm.run_with_cache(ids, "decoder.blocks.*.attn.hook_pattern", max_denoising_steps=2)
    canvas = traj.canvas_length
    for layer, kind in enumerate(config.text_config.layer_types):
        n_keys = cache[f"decoder.blocks.{layer}.attn.hook_pattern", 1].shape[-1]
        keys = di.attention_keys(traj, 0, 1, n_keys)
        prefix = [k for k in keys if k[0] == "prefix"]
        assert len(prefix) == (9 if kind == "full_attention" else config.text_config.sliding_window - 1)
        assert [t for *_, t in prefix] == ids[0, 9 - len(prefix) :].tolist()  # the last prefix tokens
        assert [t for kind_, _, t in keys if kind_ == "canvas"] == traj.step(0, 1).canvas_in[0].tolist()
        assert len(keys) == n_keys and keys[-canvas][0] == "canvas"
    with pytest.raises(ValueError, match="does not fit"):
        di.attention_keys(traj, 0, 1, canvas + 20)


def test_attention_pattern_figure_has_whole_labels_and_integer_ticks(tmp_path):
    hm = di.load_model("carry")
    ids, mask = hm.to_tokens(["carry 1 9 9 8 7 7 2 5 1 3"])
    torch.manual_seed(0)
    traj, cache = hm.run_with_cache(ids, "decoder.blocks.1.attn.hook_pattern", attention_mask=mask)
    fig = ip.attention_pattern(cache, traj, step=1, layer=1, tokenizer=hm.tokenizer)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    prompt_tokens = hm.to_str_tokens(ids[0])
    assert labels[: len(prompt_tokens)] == [f"p{i} {tok}" for i, tok in enumerate(prompt_tokens)]
    canvas = hm.to_str_tokens(traj.step(0, 1).canvas_in[0])
    assert labels[len(prompt_tokens) :] == [f"c{i} {tok}" for i, tok in enumerate(canvas)]
    assert len([a for a in fig.axes if a.get_title().startswith("head")]) == hm.text_config.num_attention_heads
    fig.savefig(tmp_path / "attention.png")
    with pytest.raises(IndexError, match="heads 0"):
        ip.attention_pattern(cache, traj, step=1, layer=1, heads=[99])


def test_positions_are_canvas_positions_on_a_filtered_cache(scaled_run):
    """``positions=`` names canvas positions, also on a cache recorded at a few of them."""
    hm, traj, cache = scaled_run
    ids, mask = traj.prompt_ids, traj.attention_mask
    torch.manual_seed(0)
    _, part = hm.run_with_cache(
        ids, NAMES, attention_mask=mask, max_denoising_steps=4, t_min=0.3, t_max=0.6, positions=[1, 4]
    )
    full = hm.decompose_resid(cache, 2, positions=[4])
    torch.testing.assert_close(hm.decompose_resid(part, 2, positions=[4]), full)
    torch.testing.assert_close(hm.decompose_resid(part, 2, positions=4), full)
    with pytest.raises(IndexError, match="position 2 is not in this cache"):
        hm.decompose_resid(part, 2, positions=[2])


def test_an_fp16_cache_decomposes_to_its_residual(scaled_run):
    """A half-precision cache (the size users store at 26B): the terms still sum to the residual."""
    hm, traj, _ = scaled_run
    torch.manual_seed(0)
    _, half = hm.run_with_cache(
        traj.prompt_ids, NAMES, attention_mask=traj.attention_mask, max_denoising_steps=4, t_min=0.3, t_max=0.6,
        dtype=torch.float16,
    )  # fmt: skip
    n = hm.text_config.num_hidden_layers
    residual = half[f"decoder.blocks.{n - 1}.hook_resid_post", 2].float()
    torch.testing.assert_close(hm.decompose_resid(half, 2).sum(0), residual, atol=2e-2, rtol=2e-2)
    assert hm.decompose_resid(half, 2, apply_ln=True).dtype == torch.float32


def test_attention_keys_in_a_later_block_with_a_padded_prompt():
    """Block 1's prefix is the prompt (left padding included) and block 0's canvas."""
    config = di.tiny_config(**TINY_CONFIGS["l4-e8k1-c6-v64"])  # sliding window 4, canvas 6
    hm = di.HookedDiffusionGemma(di.tiny_model(config, seed=0))
    ids, mask = make_prompts(config.text_config.vocab_size, 2, 0)  # row 1 is left-padded
    torch.manual_seed(0)
    traj, cache = hm.run_with_cache(
        ids, "decoder.blocks.*.attn.hook_pattern", attention_mask=mask, max_denoising_steps=2,
        max_new_tokens=2 * config.canvas_length, stability_threshold=3,
    )  # fmt: skip
    assert len(traj.blocks) == 2
    for row in (0, 1):
        for layer, kind in enumerate(config.text_config.layer_types):
            n_keys = cache[f"decoder.blocks.{layer}.attn.hook_pattern", 1, 1].shape[-1]
            keys = di.attention_keys(traj, 1, 1, n_keys, row=row)
            prefix = [t for k, _, t in keys if k == "prefix"]
            expected = traj.sequences[row, : traj.block(1).prefix_len].tolist()  # prompt + canvas 0
            assert prefix == (
                expected if kind == "full_attention" else expected[-(config.text_config.sliding_window - 1) :]
            )
