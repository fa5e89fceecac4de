"""A model split between the CPU and disk offload (accelerate, through ``load_model(device_map=...,
max_memory=..., offload_folder=...)``) gives what the one-device model gives: generation, caches,
step re-runs and batched patching, exactly."""

from __future__ import annotations

import pytest
import torch

import diffinterp as di
from diffinterp.instruments import patching as pt

PROMPTS = ["carry 1 9 9 8 7 7 2 5 1 3", "carry 4 0 2 9 9 9 1 7 3 6"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    whole = di.load_model("carry")
    split = di.load_model(
        "carry", device_map="auto", max_memory={"cpu": "2MiB"}, offload_folder=tmp_path_factory.mktemp("offload")
    )
    return whole, split


def test_the_split_really_offloads_to_disk(pair):
    _, split = pair
    placement = set(split.model.hf_device_map.values())
    assert {"cpu", "disk"} <= placement
    assert any(p.device.type == "meta" for p in split.model.parameters())  # disk-offloaded weights load per call


def test_generation_caches_and_step_reruns_equal_one_device(pair):
    whole, split = pair
    ids, mask = whole.to_tokens(PROMPTS)
    runs = []
    for hm in pair:
        torch.manual_seed(0)
        runs.append(hm.run_with_cache(ids, "decoder.blocks.*.hook_resid_post", attention_mask=mask, record_logits=True))
    (one, one_cache), (two, two_cache) = runs
    assert torch.equal(one.sequences, two.sequences)
    assert all(torch.equal(a.logits, b.logits) for a, b in zip(one.blocks[0].steps, two.blocks[0].steps, strict=True))
    assert one_cache.keys() == two_cache.keys()
    assert all(torch.equal(two_cache.get(*key).cpu(), tensor) for key, tensor in one_cache.items())
    step = one.blocks[0].n_steps - 1
    assert torch.equal(split.run_step(two, 0, step).cpu(), whole.run_step(one, 0, step))


def test_batched_patching_equals_one_device(pair):
    whole, split = pair
    ids, mask = whole.to_tokens(PROMPTS)
    corrupt_ids, corrupt_mask = whole.to_tokens(["carry 1 9 9 8 7 7 2 5 1 4", "carry 4 0 2 9 9 9 1 7 3 5"])
    values = []
    for hm in pair:
        clean, cache, corrupt, _ = pt.coupled_runs(
            hm,
            ids,
            corrupt_ids,
            "decoder.blocks.*.hook_resid_post",
            attention_mask=mask,
            corrupt_attention_mask=corrupt_mask,
            seed=0,
        )
        metric = pt.LogitDiff(pt.final_outputs(hm, clean)[1], pt.final_outputs(hm, corrupt)[1])
        runs = [pt.Patch(f"decoder.blocks.{layer}.hook_resid_post", step, 0) for step in (0, 2) for layer in (0, 3)]
        values.append(pt.run_patches(hm, corrupt, cache, runs, metric, replay=clean))
    assert torch.equal(values[0], values[1])
    assert values[0].abs().sum() > 0


def test_offload_arguments_need_a_device_map():
    with pytest.raises(ValueError, match="add device_map='auto'"):
        di.load_model("carry", max_memory={"cpu": "1GiB"})
