"""``diffinterp check``: a checkpoint folder validated from its headers, and a memory plan that
matches what runs actually allocate."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import diffinterp as di
from diffinterp.cli import main
from diffinterp.core.checkpoint import CheckpointError, check_checkpoint, memory_plan
from diffinterp.core.loading import bundled_model_path
from diffinterp.records.cache import human_bytes


@pytest.fixture(scope="module")
def bundled():
    return bundled_model_path("carry")


def plan_of(report, **kwargs) -> dict[str, int]:
    return {row.what: row.bytes for row in memory_plan(report.config, weight_bytes=report.weight_bytes, **kwargs)}


def test_the_bundled_folder_checks_and_its_plan_matches_a_real_run(bundled):
    report = check_checkpoint(bundled)
    weights = load_file(str(bundled / "model.safetensors"))
    assert report.tensors == len(weights) and report.weights_present
    assert report.weight_bytes == sum(t.numel() * t.element_size() for t in weights.values())
    hm = di.load_model("carry")
    assert report.parameters == sum(p.numel() for p in hm.model.parameters())  # shared parameters once
    ids, _ = hm.to_tokens(["carry 1 9 9 8 7 7 2 5 1 3"])
    canvas = hm.model.config.canvas_length
    torch.manual_seed(0)
    trajectory, cache = hm.run_with_cache(
        ids, "decoder.blocks.*.hook_resid_post", steps=[0], max_new_tokens=canvas, record_logits=True
    )
    steps = trajectory.blocks[0].n_steps
    plan = plan_of(report, prompt_len=ids.shape[1], steps=steps, blocks=1, dtype=torch.float32)
    assert plan["cache of every decoder hook_resid_post: one step"] == cache.nbytes
    kv = trajectory.blocks[0].runtime.past_key_values
    stored = {
        t.untyped_storage().data_ptr(): t.numel() * t.element_size()
        for layer in kv.layers
        for t in (layer.keys, layer.values)
    }
    assert plan["KV cache (one prompt)"] == sum(stored.values())
    logits = sum(s.logits.numel() * s.logits.element_size() for s in trajectory.blocks[0].steps)
    assert plan["recorded logits (float32)"] == logits
    torch.manual_seed(0)
    _, everything = hm.run_with_cache(ids, "decoder.*", steps=[0], max_new_tokens=canvas)
    assert plan["cache of every decoder hook point: one step"] == everything.nbytes  # all 66, patterns too


def test_a_real_config_folder_with_only_its_index_checks_by_name(tmp_path):
    """The released structure's config, sampler settings and a weight index (no shards, as before a
    download): every parameter name is checked; sizes come from the index; 25.4 B parameters."""
    from diffinterp.core.configs import meta_model, real_config, real_generation_config

    folder = tmp_path / "real"
    config = real_config()
    config.save_pretrained(folder)
    generation = real_generation_config()
    generation.eos_token_id = 1
    generation.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bundled_model_path("carry") / name, folder / name)
    model = meta_model(config)
    names = [name for name, _ in model.named_parameters()]
    numel = sum(p.numel() for p in model.parameters())
    index = {
        "metadata": {"total_size": 2 * numel},
        "weight_map": {n: "model-00001-of-00002.safetensors" for n in names},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    report = check_checkpoint(folder)
    assert not report.weights_present and report.weight_bytes == 2 * numel
    assert report.parameters == numel and 25.0e9 < numel < 26.0e9
    plan = plan_of(report, prompt_len=256, steps=48, blocks=1)
    assert plan["recorded logits (bfloat16)"] == 256 * 262144 * 48 * 2
    index["weight_map"].pop(names[3])
    index["weight_map"]["model.decoder.layers.99.bogus"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(folder)
    assert "unexpected tensor 'model.decoder.layers.99.bogus'" in str(err.value)
    assert "1 parameters missing" in str(err.value) and names[3].split(".layers.", 1)[1] in str(err.value)


def broken_copy(bundled, tmp_path, edit) -> str:
    folder = tmp_path / "broken"
    shutil.copytree(bundled, folder)
    edit(folder)
    return folder


def _reshaped(folder):
    weights = load_file(str(folder / "model.safetensors"))
    name = next(n for n in weights if n.endswith("embed_tokens.weight"))
    weights[name] = weights[name][:-1].clone()
    del weights[next(n for n in weights if "layers.2.self_attn.q_proj" in n)]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _truncated(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda f: (f / "config.json").unlink(), ["config.json is missing"]),
        (lambda f: (f / "config.json").write_text("{"), ["config.json is not valid JSON"]),
        (
            lambda f: (f / "config.json").write_text(json.dumps({"model_type": "gemma3"})),
            ["model_type is 'gemma3'", "'diffusion_gemma'"],
        ),
        (_reshaped, ["embed_tokens.weight' has shape [71, 128], the config implies [72, 128]", "1 parameters missing"]),
        (_truncated, ["not a readable safetensors file"]),
        (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), ["pickle files ['pytorch_model.bin']"]),
        (
            lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
            ["no tokenizer.json or tokenizer_config.json"],
        ),
        (lambda f: (f / "generation_config.json").write_text("{}"), ["sets no eos_token_id"]),
    ],
    ids=["no-config", "bad-json", "other-model", "shapes", "truncated", "pickle", "no-tokenizer", "no-eos"],
)
def test_broken_folders_get_every_problem_named(bundled, tmp_path, capsys, edit, expected):
    folder = broken_copy(bundled, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(folder)
    for text in expected:
        assert text in str(err.value), str(err.value)
    assert main(["check", str(folder)]) == 2
    assert capsys.readouterr().err.startswith(f"diffinterp check: error: {folder} is not a usable")


def test_an_untied_output_head_must_be_stored(tmp_path):
    """Only a head tied to the embeddings may be absent: an untied one would load as random weights."""
    folder = tmp_path / "untied"
    model = di.tiny_model(di.tiny_config(tie_word_embeddings=False), seed=0)
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(bundled_model_path("carry") / name, folder / name)
    assert check_checkpoint(folder).tensors > 0
    weights = load_file(str(folder / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 parameters missing, e.g. \['lm_head.weight'\]"):
        check_checkpoint(folder)


def test_the_cli_prints_the_plan_and_a_device_verdict(bundled, capsys):
    assert main(["check", "carry", "--prompt-len", "30", "--devices", "0.001"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {bundled}: ok") and "| KV cache (one prompt) | 45.0 KiB |" in out
    assert "does not fit in 1.0 MiB" in out
    report = check_checkpoint(bundled)
    kv = plan_of(report, prompt_len=30, steps=report.generation["max_denoising_steps"], blocks=1)[
        "KV cache (one prompt)"
    ]
    assert f"weights + KV cache of one prompt {human_bytes(report.weight_bytes + kv)} does not fit" in out
    assert main(["check", "carry", "--devices", "many"]) == 2
    assert "--devices takes each device's memory in GiB" in capsys.readouterr().err
