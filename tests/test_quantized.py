"""Quantized weights (``load_model(quantize=...)``, optimum-quanto on CPU): the linear layers really
hold int8 weights, the hook points and the sampler's exactness are intact, and the organism's
answers stay close to the float model's on the same prompts."""

from __future__ import annotations

import pytest
import torch
from transformers import QuantoConfig

import diffinterp as di
from diffinterp.core.loading import quantized_linear_layers
from diffinterp.organisms.evaluate import evaluate_task
from tests.conftest import decoder_step_counter, plain_forward_hook

PROMPTS = ["carry 1 9 9 8 7 7 2 5 1 3", "carry 4 0 2 9 9 9 1 7 3 6"]


@pytest.fixture(scope="module")
def pair():
    return di.load_model("carry"), di.load_model("carry", quantize="int8")


def test_every_layer_linear_holds_int8_weights_tied_to_the_encoder(pair):
    floating, quantized = pair
    names = quantized_linear_layers(quantized.model)
    layers = quantized.text_config.num_hidden_layers
    for layer in range(layers):
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.down_proj"):
            assert f"layers.{layer}.{proj}" in names
    assert quantized_linear_layers(floating.model) == []
    decoder = quantized.model.model.decoder.layers[0].self_attn.q_proj
    encoder = quantized.model.model.encoder.language_model.layers[0].self_attn.q_proj
    assert decoder.weight is encoder.weight  # the shared weights stay shared
    assert decoder.weight._data.dtype == torch.int8
    reference = floating.model.model.decoder.layers[0].self_attn.q_proj.weight
    error = (decoder.weight.dequantize() - reference).detach().abs()
    assert (
        0 < float(error.max()) <= float(reference.detach().abs().max()) / 127
    )  # per-channel int8 rounding, not a copy


def test_hooks_and_the_sampler_are_exact_on_the_quantized_model(pair):
    floating, quantized = pair
    ids, mask = quantized.to_tokens(PROMPTS)
    torch.manual_seed(0)
    reference = quantized.model.generate(ids, attention_mask=mask).sequences
    torch.manual_seed(0)
    names = [
        "decoder.blocks.1.hook_resid_post",
        "decoder.blocks.0.attn.hook_z",
        "decoder.blocks.2.moe.hook_router_probs",
    ]
    trajectory, cache = quantized.run_with_cache(ids, names_filter=names, attention_mask=mask, record_logits=True)
    assert torch.equal(trajectory.sequences, reference)
    torch.manual_seed(0)
    _, float_cache = floating.run_with_cache(ids, names_filter=names, attention_mask=mask)
    for name in names:
        assert cache.get(name, 0, 0).shape == float_cache.get(name, 0, 0).shape
    step = trajectory.steps[0][0]
    floating_step0 = floating.model(**floating.step_inputs(trajectory, 0, 0)).logits
    assert not torch.equal(step.logits, floating_step0)  # the quantized weights are what ran
    assert torch.equal(quantized.model(**quantized.step_inputs(trajectory, 0, 0)).logits, step.logits)

    # a zero-ablation through the hook point equals a plain torch hook on the quantized layer's module
    kwargs = dict(attention_mask=mask, max_denoising_steps=4)
    torch.manual_seed(1)
    ablated = quantized.run_with_hooks(
        ids, fwd_hooks=[("decoder.blocks.1.hook_attn_out", lambda t, hook: torch.zeros_like(t))], steps=[2], **kwargs
    )
    norm = quantized.model.model.decoder.layers[1].post_attention_layernorm
    with decoder_step_counter(quantized.model) as calls:
        with plain_forward_hook(norm, lambda _m, _i, out: torch.zeros_like(out) if calls["calls"] % 4 == 2 else None):
            torch.manual_seed(1)
            plain = quantized.model.generate(ids, **kwargs).sequences
    assert torch.equal(ablated.sequences, plain)
    torch.manual_seed(1)
    clean = quantized.generate(ids, record_logits=True, **kwargs)
    torch.manual_seed(1)
    ablated = quantized.run_with_hooks(
        ids,
        fwd_hooks=[("decoder.blocks.1.hook_attn_out", lambda t, hook: torch.zeros_like(t))],
        steps=[2],
        record_logits=True,
        **kwargs,
    )
    assert torch.equal(ablated.steps[0][1].logits, clean.steps[0][1].logits)
    assert not torch.equal(ablated.steps[0][2].logits, clean.steps[0][2].logits), "the ablation changed nothing"


def test_quantized_answers_stay_close_to_the_float_models(pair):
    floating, quantized = pair
    scores = [evaluate_task(hm, "carry", n=40, batch_size=40)["accuracy"] for hm in pair]
    assert scores[0] >= 0.9  # the float organism is right here (its documented accuracy is 100%)
    assert scores[1] >= scores[0] - 0.1, scores


def test_a_quantization_config_that_skips_the_tied_layers_is_refused():
    with pytest.raises(ValueError, match="modules_to_not_convert"):
        di.load_model("carry", quantize=QuantoConfig(weights="int8"))  # transformers' default skips tied modules
    with pytest.raises(ValueError, match="int8, int4, float8"):
        di.load_model("carry", quantize="int3")
    assert isinstance(
        di.load_model("carry", quantize=QuantoConfig(weights="int8", modules_to_not_convert=["lm_head"])),
        di.HookedDiffusionGemma,
    )


def test_the_int8_row_of_the_memory_plan_is_what_the_quantized_model_holds(pair):
    from diffinterp.core.checkpoint import check_checkpoint, memory_plan
    from diffinterp.core.loading import bundled_model_path

    _, quantized = pair
    held, seen = 0, set()
    for parameter in quantized.model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if hasattr(parameter, "_data") and hasattr(parameter, "_scale"):  # quanto's int8 weight and its scales
            held += parameter._data.numel() * parameter._data.element_size()
            held += parameter._scale.numel() * parameter._scale.element_size()
        else:
            held += parameter.numel() * parameter.element_size()
    report = check_checkpoint(bundled_model_path("carry"))
    plan = memory_plan(
        report.config, weight_bytes=report.weight_bytes, prompt_len=12, steps=4, blocks=1, dtype=torch.float32
    )
    assert {row.what: row.bytes for row in plan}["weights, quantize='int8'"] == held


def test_a_quantized_load_still_refuses_a_checkpoint_missing_a_weight(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from diffinterp.core.loading import bundled_model_path

    folder = tmp_path / "carry"
    shutil.copytree(bundled_model_path("carry"), folder)
    weights = load_file(str(folder / "model.safetensors"))
    dropped = next(name for name in weights if name.endswith("self_attn.q_proj.weight"))
    del weights[dropped]
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="missing weights"):
        di.load_model(folder, quantize="int8")


def test_the_load_report_is_dropped_only_when_it_lists_nothing_but_quantizer_scales():
    import logging

    from diffinterp.core.loading import _DropScalesOnlyReport

    def record(rows: str) -> logging.LogRecord:
        table = "Key | Status | \n----+--------+-\n" + rows
        message = f"DiffusionGemmaForBlockDiffusion LOAD REPORT from: carry\n{table}\nNotes:\n- MISSING: ..."
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, message, None, None)

    drop = _DropScalesOnlyReport()
    scales = "model.layers.{0, 1}.mlp.up_proj.input_scale | MISSING | \nmodel.layers.{0, 1}.mlp.up_proj.output_scale | MISSING | \n"
    assert not drop.filter(record(scales))
    assert drop.filter(record(scales + "model.extra.weight | UNEXPECTED | \n"))
    assert drop.filter(record("model.layers.0.mlp.up_proj.weight | MISSING | \n"))
    other = logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, "something else", None, None)
    assert drop.filter(other)
