"""Loading checkpoints, configs, and the real 26B structure on the meta device."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import diffinterp as di
from diffinterp.organisms.checkpoints import save_tiny_random_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    return save_tiny_random_checkpoint(folder, seed=3)


def test_load_model_roundtrip(saved):
    hm = di.load_model(saved)
    from diffinterp.organisms.tokenizer import VOCAB_SIZE

    reference = di.tiny_model(di.tiny_config(vocab_size=VOCAB_SIZE), seed=3)
    for (name, a), (_, b) in zip(hm.model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert hm.tokenizer is not None and hm.tokenizer.pad_token_id == 0
    input_ids, mask = hm.to_tokens(["arith a=3 ? a", "seq copy 4 5"])
    torch.manual_seed(0)
    trajectory = hm.generate(input_ids, attention_mask=mask)
    assert trajectory.generation["max_denoising_steps"] == 8  # from generation_config.json
    torch.manual_seed(0)
    assert torch.equal(trajectory.sequences, hm.model.generate(input_ids, attention_mask=mask).sequences)


def test_bundled_model_loads():
    hm = di.load_model()
    assert hm.tokenizer is not None
    assert hm.model.config.model_type == "diffusion_gemma"


def test_bad_folders_fail_clearly(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        di.load_model(tmp_path / "nothing")
    corrupted = tmp_path / "corrupted"
    shutil.copytree(saved, corrupted)
    (corrupted / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        di.load_model(corrupted)
    truncated = tmp_path / "truncated"
    shutil.copytree(saved, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="could not load the checkpoint"):
        di.load_model(truncated)
    other = tmp_path / "other"
    shutil.copytree(saved, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"], config["architectures"] = "gemma4_text", ["Gemma4ForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds a 'gemma4_text' model"):
        di.load_model(other)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(saved, incomplete)
    from safetensors.torch import load_file, save_file

    weights = load_file(incomplete / "model.safetensors")
    weights.pop(next(k for k in weights if "layers.0.mlp.up_proj" in k))
    save_file(weights, incomplete / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="incomplete or corrupted: missing weights"):
        di.load_model(incomplete)
    pickled = tmp_path / "pickled"
    shutil.copytree(saved, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="never loaded"):
        di.load_model(pickled)


def test_real_config_matches_the_reference_facts():
    config = di.real_config()
    text = config.text_config
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers) == (262144, 2816, 30)
    assert [i for i, t in enumerate(text.layer_types) if t == "full_attention"] == [5, 11, 17, 23, 29]
    assert (text.num_experts, text.top_k_experts, config.canvas_length) == (128, 8, 256)
    assert text.per_layer_config[5].head_dim == 512 and text.per_layer_config[5].num_key_value_heads == 2
    generation = di.real_generation_config()
    assert generation.max_denoising_steps == 48 and generation.sampler_config.entropy_bound == 0.1


def test_real_structure_on_meta_device():
    model = di.meta_model()
    assert next(model.parameters()).device.type == "meta"
    hm = di.HookedDiffusionGemma(model)
    assert len(hm.hook_names) == 6 + 30 * 15 + 2 + 30 * 15
    assert hm.hook_shape("decoder.blocks.0.attn.hook_q") == (1, 256, 16, 256)
    assert hm.hook_shape("decoder.blocks.5.attn.hook_k") == (1, 256, 2, 512)
    assert hm.hook_shape("decoder.blocks.3.moe.hook_router_probs") == (1, 256, 128)
    assert hm.hook_shape("decoder.hook_logits") == (1, 256, 262144)
    assert hm.hook_shape("decoder.blocks.0.attn.hook_pattern", prompt_len=2000, block=2) == (1, 16, 256, 1023 + 256)
    assert hm.hook_shape("decoder.blocks.5.attn.hook_pattern", prompt_len=2000, block=2) == (1, 16, 256, 2512 + 256)


def test_tiny_config_rejects_inconsistent_layers():
    with pytest.raises(ValueError, match="one layer type per layer"):
        di.tiny_config(num_hidden_layers=2, layer_types=["full_attention"])
    with pytest.raises(ValueError, match="device= or device_map="):
        di.load_model(None, device="cpu", device_map="auto")
