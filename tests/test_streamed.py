"""Caches streamed to disk (``run_with_cache(store=DIR)``): equal to the in-memory cache, bounded in
memory however long the run, whole or absent on disk."""

from __future__ import annotations

import pytest
import torch

import diffinterp as di
from diffinterp.records.serialization import RecordError
from tests.conftest import make_prompts


@pytest.fixture(scope="module")
def hm():
    return di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(), seed=3))


def both(hm, folder, names="*", shard_bytes=4096, **kwargs):
    ids, mask = make_prompts(96, 2, 5)
    settings = {"attention_mask": mask, "max_new_tokens": 16, "max_denoising_steps": 4, **kwargs}
    torch.manual_seed(0)
    in_memory = hm.run_with_cache(ids, names, **settings)
    torch.manual_seed(0)
    streamed = hm.run_with_cache(ids, names, store=folder, shard_bytes=shard_bytes, **settings)
    return in_memory, streamed


def test_a_streamed_cache_equals_the_in_memory_one_and_reopens_from_disk(hm, tmp_path):
    (trajectory, cache), (streamed_trajectory, streamed) = both(hm, tmp_path / "store")
    assert len(trajectory.blocks) == 2 and torch.equal(streamed_trajectory.sequences, trajectory.sequences)
    assert streamed.keys() == cache.keys() and len(streamed.shards) > 10
    assert all(torch.equal(streamed.get(*key), tensor) for key, tensor in cache.items())
    name = "decoder.blocks.1.hook_resid_post"
    assert torch.equal(streamed.stack(name, block=1), cache.stack(name, block=1))
    reopened = di.DenoisingCache.load(tmp_path / "store")
    assert reopened.keys() == cache.keys() and reopened.nbytes == cache.nbytes
    assert all(torch.equal(reopened.get(*key), tensor) for key, tensor in cache.items())
    assert sorted(p.name for p in (tmp_path / "store").iterdir())[0] == "index.json"


@pytest.mark.parametrize("steps", [4, 16])
def test_memory_held_stays_below_one_shard_and_one_activation_as_the_run_grows(hm, tmp_path, steps):
    """4x the steps, 4x the bytes on disk: the bytes held in memory stay under the same bound."""
    (_, cache), (_, streamed) = both(hm, tmp_path / "store", max_denoising_steps=steps, stability_threshold=steps + 1)
    largest = max(t.numel() * t.element_size() for _, t in streamed.items())
    assert streamed.nbytes > 20 * streamed.shard_bytes
    assert streamed.peak_pending_bytes <= streamed.shard_bytes + largest
    assert streamed.pending_bytes == 0 and streamed.finished and streamed.nbytes == cache.nbytes
    assert {step for _, step, _ in streamed.keys() if step is not None} == set(range(steps))


def test_an_interrupted_run_leaves_no_folder_and_an_earlier_one_untouched(hm, tmp_path):
    folder = tmp_path / "store"
    both(hm, folder, names="decoder.blocks.0.hook_resid_post")
    before = sorted((p.name, p.stat().st_size) for p in folder.iterdir())

    def fail(tensor, hook):
        if hook.step == 2:
            raise RuntimeError("stop here")

    ids, mask = make_prompts(96, 2, 5)
    with pytest.raises(RuntimeError, match="stop here"), hm.hooks([("decoder.blocks.1.hook_resid_post", fail)]):
        hm.run_with_cache(ids, "*", attention_mask=mask, max_new_tokens=16, store=folder, shard_bytes=4096)
    assert sorted((p.name, p.stat().st_size) for p in folder.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name != "store"]  # no temporary folder left behind
    assert not hm.attached_hook_points


def test_bad_stores_and_arguments_get_clear_errors(hm, tmp_path):
    folder = tmp_path / "store"
    both(hm, folder, names="decoder.blocks.0.hook_resid_post", shard_bytes=1)
    shard = folder / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(RecordError, match="checksum mismatch"):
        di.DenoisingCache.load(folder)
    (folder / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no index.json"):
        di.DenoisingCache.load(folder)
    ids, _ = make_prompts(96, 1, 5)
    with pytest.raises(ValueError, match="store= writes the cache to disk from the CPU"):
        hm.run_with_cache(ids, "*", store=tmp_path / "x", device="cuda")
    with pytest.raises(ValueError, match="shard_bytes must be a positive int"):
        hm.run_with_cache(ids, "*", store=tmp_path / "x", shard_bytes=0)
    assert not (tmp_path / "x").exists()
    results = tmp_path / "results"
    results.mkdir()
    (results / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="no cache store .no index.json.: it would be replaced whole"):
        hm.run_with_cache(ids, "*", store=results)
    assert (results / "notes.txt").read_text() == "keep me"


def test_an_index_that_does_not_match_its_shards_is_refused(hm, tmp_path):
    """Two entries of the same shape swapped in index.json would read each other's tensors."""
    import json

    folder = tmp_path / "store"
    both(hm, folder, names="decoder.blocks.*.hook_resid_post", shard_bytes=10**9)
    index = json.loads((folder / "index.json").read_text())
    index["entries"][0][4], index["entries"][1][4] = index["entries"][1][4], index["entries"][0][4]
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(RecordError, match="the index belongs to another store"):
        di.DenoisingCache.load(folder)
