"""No silent wrong results: tampered records, threads, re-entrant hooks, bad inputs, missing settings."""

from __future__ import annotations

import json
import struct
import threading

import pytest
import torch

import diffinterp as di
from diffinterp.records.serialization import RecordError


@pytest.fixture(scope="module")
def hm():
    return di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(vocab_size=64), seed=2))


@pytest.fixture(scope="module")
def saved(hm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    torch.manual_seed(0)
    traj, cache = hm.run_with_cache(
        ids, "decoder.blocks.0.hook_resid_post", max_new_tokens=8, max_denoising_steps=3, record_logits=True
    )
    return traj.save(folder / "traj.safetensors"), cache.save(folder / "cache.safetensors"), traj, cache


# ---------------------------------------------------------------- tampered records
def _split(path):
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def _write(path, header, body):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def tampered(source, target, edit_header=None, edit_body=None, edit_meta=None):
    header, body = _split(source)
    if edit_meta is not None:
        meta = json.loads(header["__metadata__"]["meta"])
        edit_meta(meta)
        header["__metadata__"]["meta"] = json.dumps(meta)
    if edit_header is not None:
        edit_header(header)
    if edit_body is not None:
        body = edit_body(bytearray(body))
    _write(target, header, bytes(body))
    return target


def test_untouched_records_round_trip_exactly(saved):
    traj_path, cache_path, traj, cache = saved
    loaded, again = di.Trajectory.load(traj_path), di.DenoisingCache.load(cache_path)
    assert torch.equal(loaded.sequences, traj.sequences) and loaded.bottleneck == traj.bottleneck
    for key, tensor in cache.items():
        assert torch.equal(again.get(*key), tensor)


def _flip(body):
    body[len(body) // 2] ^= 0x01
    return body


def _first_entry(header, dtype):
    return next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == dtype and len(v["shape"]) == 2)


@pytest.mark.parametrize("which", ["traj", "cache"])
def test_a_flipped_byte_is_a_checksum_error(saved, tmp_path, which):
    path = saved[0] if which == "traj" else saved[1]
    bad = tampered(path, tmp_path / "bad.safetensors", edit_body=_flip)
    loader = di.Trajectory.load if which == "traj" else di.DenoisingCache.load
    with pytest.raises(RecordError, match="checksum mismatch") as err:
        loader(bad)
    assert str(bad) in str(err.value)


def test_a_version_2_file_with_crc32_checksums_is_still_read_and_checked(saved, tmp_path):
    """Files written before the XXH3 checksum (format version 2: a CRC-32 per tensor, computed here
    independently with zlib) load to the same tensors; a flipped byte in one is still caught."""
    import zlib

    cache_path, cache = saved[1], saved[3]

    def as_version_2(header):
        metadata = header["__metadata__"]
        schema = json.loads(metadata["schema"])
        _, body = _split(cache_path)
        for name, entry in schema.items():
            start, end = header[name]["data_offsets"]
            del entry["xxh3_64"]
            entry["crc32"] = zlib.crc32(body[start:end])
        metadata["schema"], metadata["version"] = json.dumps(schema), "2"

    old = tampered(cache_path, tmp_path / "v2.safetensors", edit_header=as_version_2)
    loaded = di.DenoisingCache.load(old)
    assert all(torch.equal(loaded.get(*key), tensor) for key, tensor in cache.items())
    with pytest.raises(RecordError, match="checksum mismatch"):
        di.DenoisingCache.load(tampered(old, tmp_path / "v2bad.safetensors", edit_body=_flip))

    def as_version_9(header):
        header["__metadata__"]["version"] = "9"

    with pytest.raises(RecordError, match="version 9; this diffinterp reads versions 2, 3"):
        di.DenoisingCache.load(tampered(cache_path, tmp_path / "v9.safetensors", edit_header=as_version_9))


def test_an_edited_header_dtype_or_shape_names_the_tensor(saved, tmp_path):
    traj_path = saved[0]

    def to_float(header):
        header[_first_entry(header, "I64")]["dtype"] = "F64"  # same byte size: safetensors reads it fine

    def transpose(header):
        entry = header[_first_entry(header, "I64")]
        entry["shape"] = entry["shape"][::-1]

    for edit, message in ((to_float, "stored as F64, described as I64"), (transpose, "stored with shape")):
        with pytest.raises(RecordError, match=message):
            di.Trajectory.load(tampered(traj_path, tmp_path / "bad.safetensors", edit_header=edit))


def test_swapped_or_renamed_entries_are_caught(saved, tmp_path):
    cache_path = saved[1]

    def swap(header):
        header["t0"], header["t1"] = header["t1"], header["t0"]

    def rename(header):
        header["t99"] = header.pop("t0")

    with pytest.raises(RecordError, match="checksum mismatch|described as"):
        di.DenoisingCache.load(tampered(cache_path, tmp_path / "swap.safetensors", edit_header=swap))
    with pytest.raises(RecordError, match="absent"):
        di.DenoisingCache.load(tampered(cache_path, tmp_path / "rename.safetensors", edit_header=rename))


def test_metadata_that_does_not_describe_the_file_is_caught(saved, tmp_path):
    traj_path, cache_path = saved[0], saved[1]
    fewer = lambda meta: meta["blocks"][0]["steps"].pop()  # noqa: E731
    bogus = lambda meta: meta.update(bottleneck="beam")  # noqa: E731
    wrong_type = lambda meta: meta.update(blocks=5)  # noqa: E731
    for edit, field in ((fewer, "meta.blocks"), (bogus, "meta.bottleneck"), (wrong_type, "meta.blocks")):
        with pytest.raises(RecordError, match=field):
            di.Trajectory.load(tampered(traj_path, tmp_path / "bad.safetensors", edit_meta=edit))
    dropped = lambda meta: meta["entries"].pop()  # noqa: E731
    encoder_step = lambda meta: meta["entries"][0].__setitem__(1, None)  # noqa: E731
    for edit, message in ((dropped, "lists"), (encoder_step, "encoder entries have no step")):
        with pytest.raises(RecordError, match=message):
            di.DenoisingCache.load(tampered(cache_path, tmp_path / "bad.safetensors", edit_meta=edit))


def test_record_errors_are_value_errors_naming_file_and_field(saved, tmp_path):
    bad = tampered(saved[0], tmp_path / "x.safetensors", edit_meta=lambda m: m.pop("canvas_length"))
    with pytest.raises(ValueError) as err:
        di.Trajectory.load(bad)
    assert isinstance(err.value, RecordError) and err.value.field == "meta" and err.value.path == bad


# ---------------------------------------------------------------- threads
def _run(hm, ids):
    torch.manual_seed(0)
    traj, cache = hm.run_with_cache(ids, "decoder.blocks.*.hook_resid_post", max_new_tokens=8, max_denoising_steps=3)
    return traj.sequences, {key: t.clone() for key, t in cache.items()}


def test_a_second_thread_is_refused_at_once_while_the_first_holds_the_model(hm):
    from diffinterp.core.hook_points import ConcurrentUseError

    prompt_b = torch.tensor([[20, 21, 22]])
    reference = _run(hm, prompt_b)
    holding, release, outcome = threading.Event(), threading.Event(), {}

    def first():
        with hm.hooks(fwd_hooks=[("decoder.blocks.0.hook_resid_post", lambda t, hook: t * 2)]):
            holding.set()
            release.wait(30)

    def second():
        holding.wait(30)
        try:
            _run(hm, prompt_b)
            outcome["result"] = "ran"
        except ConcurrentUseError as err:
            outcome["result"] = str(err)
        release.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "another thread" in outcome["result"] and "copy.deepcopy" in outcome["result"]
    assert hm.attached_hook_points == []
    again = _run(hm, prompt_b)  # once the first thread is done the model is free, and unaffected
    assert torch.equal(again[0], reference[0]) and all(torch.equal(again[1][k], v) for k, v in reference[1].items())


def test_two_threads_never_get_mixed_data(hm):
    """Each thread's result equals a single-threaded run of its own prompt with its own random draws.

    The global torch RNG is process-wide (as for HF ``generate``), so the draws a thread makes depend
    on the other thread's seeding; what must never happen is one run's tensors computed from the
    other's prompt or hooks. So each result is checked against a single-threaded replay of the
    trajectory it returned (same draws), and against its own prompt.
    """
    from diffinterp.core.hook_points import ConcurrentUseError

    prompts = [torch.tensor([[5, 6, 7]]), torch.tensor([[30, 31, 32, 33]])]
    names = "decoder.blocks.*.hook_resid_post"
    kwargs = dict(max_new_tokens=8, max_denoising_steps=3)
    results: list[list] = [[], []]

    def worker(i):
        for _ in range(4):
            try:
                traj, cache = hm.run_with_cache(prompts[i], names, **kwargs)
                results[i].append((traj, {key: t.clone() for key, t in cache.items()}))
            except ConcurrentUseError:
                results[i].append(None)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    checked = 0
    for i in range(2):
        for got in results[i]:
            if got is None:
                continue  # refused at once: the other thread held the model
            traj, cache = got
            assert torch.equal(traj.sequences[:, : prompts[i].shape[1]], prompts[i])
            again, again_cache = hm.run_with_cache(prompts[i], names, replay=traj, **kwargs)
            assert torch.equal(again.sequences, traj.sequences)
            assert set(cache) == set(again_cache.keys())
            assert all(torch.equal(again_cache[key], value) for key, value in cache.items())
            checked += 1
    assert checked > 0


# ---------------------------------------------------------------- re-entrant hooks
def test_a_hook_that_calls_the_model_raises_naming_the_hook(hm, saved):
    from diffinterp.core.hook_points import ReentrantRunError

    traj = saved[2]
    ids = torch.tensor([[5, 6, 7, 8]])
    calls = {
        "run_step": lambda: hm.run_step(traj, 0, 0),
        "generate": lambda: hm.generate(ids, max_new_tokens=8, max_denoising_steps=2),
    }
    for what, call in calls.items():

        def hook(tensor, hook, call=call):
            call()

        with pytest.raises(
            ReentrantRunError, match=f"{what} was called from a hook on 'decoder.blocks.1.hook_resid_post'"
        ):
            hm.run_with_hooks(ids, fwd_hooks=[("decoder.blocks.1.hook_resid_post", hook)], max_new_tokens=8,
                              max_denoising_steps=2)  # fmt: skip
        assert hm.attached_hook_points == [] and hm.context.running is None and hm.context.step is None
    torch.manual_seed(0)
    assert hm.generate(ids, max_new_tokens=8, max_denoising_steps=2).sequences.shape == (1, 12)


def test_a_hook_may_read_recorded_step_inputs_without_disturbing_the_outer_cache(hm, saved):
    traj = saved[2]
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    names = "decoder.blocks.*.hook_resid_post"
    torch.manual_seed(0)
    _, plain = hm.run_with_cache(ids, names, max_new_tokens=8, max_denoising_steps=3)
    seen = []

    def reads_inputs(tensor, hook):
        if hook.step == 1:
            seen.append(hm.step_inputs(traj, 0, 2)["decoder_input_ids"].shape)

    torch.manual_seed(0)
    with hm.hooks(fwd_hooks=[("decoder.blocks.0.hook_resid_post", reads_inputs)]):
        _, inner = hm.run_with_cache(ids, names, max_new_tokens=8, max_denoising_steps=3)
    assert seen and set(inner.keys()) == set(plain.keys())
    assert all(torch.equal(inner.get(*k), v) for k, v in plain.items())


# ---------------------------------------------------------------- checkpoints
@pytest.fixture
def checkpoint(tmp_path):
    from diffinterp.organisms.checkpoints import save_tiny_random_checkpoint

    return save_tiny_random_checkpoint(tmp_path / "ckpt", seed=1)


def test_missing_or_unreadable_sampler_settings_fail_unless_given(checkpoint):
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    settings = checkpoint / "generation_config.json"
    original = settings.read_text()
    settings.unlink()
    with pytest.raises(ValueError, match="has no generation_config.json.*generation_config="):
        di.load_model(checkpoint)
    settings.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        di.load_model(checkpoint)
    settings.write_text(json.dumps({k: v for k, v in json.loads(original).items() if k != "eos_token_id"}))
    with pytest.raises(ValueError, match="sets no eos_token_id"):
        di.load_model(checkpoint)
    given = DiffusionGemmaGenerationConfig(max_new_tokens=8, max_denoising_steps=4, eos_token_id=1, pad_token_id=0)
    hm = di.load_model(checkpoint, generation_config=given)
    assert hm.model.generation_config.max_denoising_steps == 4


def test_non_finite_weights_are_reported_at_load(checkpoint):
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    name = next(k for k in weights if "layers.0" in k and weights[k].dtype.is_floating_point)
    weights[name][0] = float("nan")
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="non-finite weights"):
        di.load_model(checkpoint)


# ---------------------------------------------------------------- bad inputs
def test_bad_token_ids_are_refused_before_the_run(hm):
    vocab = hm.config.text_config.vocab_size
    cases = [
        (torch.tensor([[1.0, 2.0]]), TypeError, "integer token ids"),
        (torch.zeros(0, 3, dtype=torch.long), ValueError, "no prompts"),
        (torch.zeros(2, 0, dtype=torch.long), ValueError, "length 0"),
        (torch.tensor([[3, vocab]]), ValueError, f"token id {vocab}, outside the vocabulary"),
        (torch.tensor([[3, -1]]), ValueError, "token id -1"),
        (torch.tensor([3, 4]), ValueError, r"\[batch, prompt_len\]"),
    ]
    for ids, kind, message in cases:
        with pytest.raises(kind, match=message):
            hm.generate(ids, max_new_tokens=8, max_denoising_steps=2)
    assert hm.context.running is None


def test_prompt_lists_must_be_non_empty_strings(checkpoint):
    hm = di.load_model(checkpoint)
    with pytest.raises(ValueError, match="no prompts"):
        hm.to_tokens([])
    with pytest.raises(TypeError, match="must be strings"):
        hm.to_tokens([3, 4])


def test_misspelt_generation_arguments_name_the_nearest_valid_one(hm):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(TypeError, match="unknown generation argument 'record_logit'; did you mean 'record_logits'"):
        hm.generate(ids, record_logit=True, max_new_tokens=8)
    with pytest.raises(TypeError, match="'max_denoising_step'; did you mean 'max_denoising_steps'"):
        hm.generate(ids, max_denoising_step=3)


def test_dtypes_may_be_named_and_bad_names_are_refused(hm):
    ids = torch.tensor([[5, 6, 7]])
    torch.manual_seed(0)
    traj = hm.generate(ids, record_logits=True, logits_dtype="float16", max_new_tokens=8, max_denoising_steps=2)
    assert traj.steps[0][0].logits.dtype == torch.float16
    with pytest.raises(TypeError, match="logits_dtype must be a torch dtype or its name"):
        hm.generate(ids, record_logits=True, logits_dtype="half-ish", max_new_tokens=8)


def test_positions_are_checked_before_the_run(hm):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="positions is empty"):
        hm.run_with_cache(ids, "decoder.hook_embed", positions=[], max_new_tokens=8)
    canvas = hm.config.canvas_length
    with pytest.raises(IndexError, match=f"positions holds {canvas}, outside the canvas"):
        hm.run_with_cache(ids, "decoder.hook_embed", positions=[0, canvas], max_new_tokens=8)
    assert hm.attached_hook_points == []


def test_a_hook_that_returns_nan_is_named_with_its_step_and_block(hm):
    ids = torch.tensor([[5, 6, 7]])

    def poison(tensor, hook):
        return tensor * float("nan") if hook.step == 1 else None

    with pytest.raises(
        ValueError, match=r"hook on 'decoder.blocks.0.hook_mlp_out' at step 1, block 0 returned non-finite"
    ):
        hm.run_with_hooks(ids, fwd_hooks=[("decoder.blocks.0.hook_mlp_out", poison)], max_new_tokens=8,
                          max_denoising_steps=3)  # fmt: skip
    assert hm.attached_hook_points == [] and hm.context.pending == []


def test_expert_ids_outside_the_layer_are_refused(hm):
    ids = torch.tensor([[5, 6, 7]])
    experts = hm.text_config.num_experts

    def bad_experts(idx, hook):
        return torch.full_like(idx, experts)

    with pytest.raises(ValueError, match=f"wrote expert id {experts}; this layer has experts 0..{experts - 1}"):
        hm.run_with_hooks(ids, fwd_hooks=[("decoder.blocks.0.moe.hook_topk_idx", bad_experts)], max_new_tokens=8,
                          max_denoising_steps=2)  # fmt: skip


def test_a_corrupted_tokenizer_is_a_clear_error(checkpoint):
    (checkpoint / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"')
    with pytest.raises(ValueError, match="tokenizer in .* could not be read"):
        di.load_model(checkpoint)


# ---------------------------------------------------------------- memory guard
def test_the_default_guard_refuses_a_cache_that_cannot_fit(hm, monkeypatch):
    from diffinterp.core import memory
    from diffinterp.records.cache import CacheBudgetError

    ids = torch.tensor([[5, 6, 7]])
    estimate = hm.estimate_cache_bytes(ids, "decoder.blocks.*.hook_resid_post", max_new_tokens=8, max_denoising_steps=3)
    monkeypatch.setattr(memory, "available_bytes", lambda device: estimate)  # 80% of it is the budget
    with pytest.raises(CacheBudgetError, match=r"names_filter=.*positions=.*max_bytes"):
        hm.run_with_cache(ids, "decoder.blocks.*.hook_resid_post", max_new_tokens=8, max_denoising_steps=3)
    assert hm.attached_hook_points == []
    torch.manual_seed(0)  # the way out it names works: a cache of one position fits
    _, cache = hm.run_with_cache(
        ids, "decoder.blocks.*.hook_resid_post", positions=[0], max_new_tokens=8, max_denoising_steps=3
    )
    assert 0 < cache.nbytes < 0.8 * estimate
    _, unchecked = hm.run_with_cache(
        ids, "decoder.blocks.*.hook_resid_post", max_bytes=None, max_new_tokens=8, max_denoising_steps=3
    )
    assert unchecked.nbytes <= estimate


def test_recorded_logits_are_guarded_too(hm, monkeypatch):
    from diffinterp.core import memory
    from diffinterp.records.cache import CacheBudgetError

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    with pytest.raises(CacheBudgetError, match="recording the logits .* logits_dtype=torch.bfloat16"):
        hm.generate(torch.tensor([[5, 6, 7]]), record_logits=True, max_new_tokens=8, max_denoising_steps=3)


def test_the_estimate_is_linear_in_hooks_plus_canvases(hm, monkeypatch):
    from diffinterp.core import hooked

    calls = []
    original = hooked.hook_shape
    monkeypatch.setattr(hooked, "hook_shape", lambda *a, **k: calls.append(1) or original(*a, **k))
    ids = torch.tensor([[5, 6, 7]])
    names = hm.resolve_names(None)
    hm.estimate_cache_bytes(ids, None, max_new_tokens=8 * 200, max_denoising_steps=3)  # 200 canvases
    patterns = 2 * len(set(hm.text_config.layer_types))  # encoder and decoder, per layer type
    assert len(calls) <= 2 * len(names) + patterns * 200
