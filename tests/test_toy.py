"""The toy tasks, tokenizer, training objective and the bundled checkpoints (diffinterp.organisms)."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch

from diffinterp.organisms import catalog
from diffinterp.organisms.batches import canvas_batch, prompt_batch
from diffinterp.organisms.evaluate import evaluate_task
from diffinterp.organisms.families import toy4
from diffinterp.organisms.task import Example, is_test_prompt
from diffinterp.organisms.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
from diffinterp.organisms.train import TrainConfig, corrupt, train_losses
from diffinterp.organisms.twin import bundled_ar_path, bundled_diffusion_path, load_ar_baseline
from diffinterp.stats import wilson_interval

SAMPLE_N = 32  # held-out examples per task in the bundled-accuracy checks


# ---------------------------------------------------------------- tokenizer and tasks
def test_tokenizer_round_trips_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (PAD_ID, EOS_ID, BOS_ID)
    ids = tok("arith a=3 b=a+14 ? b")["input_ids"]
    assert ids[0] == BOS_ID and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids)[1:] == "arith a = 3 b = a + 1 4 ? b".split()


@pytest.mark.parametrize("task", toy4.TASKS)
def test_generators_are_seeded_and_the_test_split_is_disjoint(task):
    a = [catalog.task(task).sample(random.Random(7)) for _ in range(3)]
    b = [catalog.task(task).sample(random.Random(7)) for _ in range(3)]
    assert a == b
    train = {catalog.task(task).sample(random.Random(1)).prompt for _ in range(300)}
    test = {e.prompt for e in catalog.task(task).test_set(100)}
    assert len(test) == 100 and not train & test
    assert all(is_test_prompt(p) for p in test) and not any(is_test_prompt(p) for p in train)


def test_task_semantics_and_exact_match():
    rng = random.Random(3)
    for _ in range(50):
        ex = catalog.task("arith").sample(rng)
        env = {}
        for stmt in ex.prompt.split()[1:-2]:
            name, expr = stmt.split("=")
            env[name] = eval(expr, {}, dict(env))  # noqa: S307 - our own generated text
        assert ex.answer.endswith(f"= {env[ex.prompt.split()[-1]]}")
    mon = Example("mon", "mon 7 1 2", "rev 2 1 7")
    assert toy4.hidden_property(mon) == "rev"
    assert catalog.task("mon").accepts("rev 2 1 7", mon) and catalog.task("mon").accepts("rev  2 1 7", mon)
    assert not catalog.task("mon").accepts("rev 2 1", mon)
    lo, hi = wilson_interval(90, 100)
    assert lo < 0.9 < hi and 0.8 < lo and hi < 0.96


def test_case_of_reads_the_sub_case_from_the_prompt():
    # hand-built examples: chain length, hop count (distractor use excluded), seq op/length, mon rule
    assert toy4.case_of(Example("arith", "arith a=3 b=a+4 c=b*2 ? c", "b=7 c=14 = 14")) == "2 steps"
    assert toy4.case_of(Example("hop", "hop x=5 q=7 m=x k=q t=m ? t", "5")) == "2 hops, answer first"
    assert toy4.case_of(Example("hop", "hop j=8 r=j w=r k=w y=1 t=y ? k", "8")) == "3 hops, answer first"
    assert toy4.case_of(Example("hop", "hop q=7 x=5 m=x k=q t=m ? t", "5")) == "2 hops, distractor first"
    assert toy4.case_of(Example("seq", "seq rev 3 1 4 1", "1 4 1 3")) == "rev 4"
    assert toy4.case_of(Example("mon", "mon 7 1 2", "rev 2 1 7")) == "rule rev"
    # the generator's own hop count agrees with the label on generated examples
    rng = random.Random(0)
    for _ in range(30):
        ex = catalog.task("hop").sample(rng)
        n_hops = int(toy4.case_of(ex).split()[0])
        assert 2 <= n_hops <= 4 and len(ex.prompt.split()) == 1 + (n_hops + 1) + 2 + 2


def test_batches_left_pad_prompts_and_end_canvases_with_eos():
    ids, mask = prompt_batch(["seq copy 1 2", "arith a=3 b=a+4 ? b"])
    assert ids[0, 0] == PAD_ID and mask[0, 0] == 0 and ids[:, -1].ne(PAD_ID).all() and (ids[:, 0] != BOS_ID).any()
    canvas = canvas_batch(["1 2"])
    assert canvas[0, :3].tolist() == [1 + 3 + 1, 2 + 3 + 1, EOS_ID] and canvas[0, 3:].eq(PAD_ID).all()
    noisy, t = corrupt(canvas.repeat(256, 1), 64, torch.Generator().manual_seed(0))
    changed = (noisy != canvas).float().mean(dim=1)
    assert torch.corrcoef(torch.stack([changed, t[:, 0]]))[0, 1] > 0.8  # corruption rate follows t


# ---------------------------------------------------------------- training reproducibility
@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_training_is_reproducible_under_a_seed(kind):
    cfg = dict(model=kind, size="tiny", batch_size=8, warmup=2, threads=1)
    first = train_losses(TrainConfig(seed=3, **cfg), 3)
    again = train_losses(TrainConfig(seed=3, **cfg), 3)
    other = train_losses(TrainConfig(seed=4, **cfg), 3)
    assert first == again
    assert all(math.isfinite(x) for x in first) and first != other


# ---------------------------------------------------------------- the bundled checkpoints
def _documented(folder) -> dict:
    return json.loads((folder / "eval_results.json").read_text())


def _tolerance(p: float, n: int) -> float:
    return max(0.15, 3 * math.sqrt(max(p * (1 - p), 0.01) / n))


@pytest.fixture(scope="module")
def hooked_diffusion():
    from diffinterp.core.loading import load_model

    return load_model(bundled_diffusion_path("toy4"))


@pytest.fixture(scope="module")
def ar_baseline():
    return load_ar_baseline("toy4")


def test_bundled_folders_are_small_hf_folders():
    from transformers import AutoTokenizer

    for folder in (bundled_diffusion_path("toy4"), bundled_ar_path("toy4")):
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
        assert sum(p.stat().st_size for p in folder.iterdir()) < 25 * 2**20
        assert AutoTokenizer.from_pretrained(folder).eos_token_id == EOS_ID


def test_default_loaders_load_the_bundled_models():
    import diffinterp as di
    from diffinterp.core.loading import DEFAULT_MODEL

    hm = di.load_model()
    assert type(hm.model).__name__ == "DiffusionGemmaForBlockDiffusion"
    assert hm.model.config.canvas_length == catalog.organism(DEFAULT_MODEL).canvas_length
    assert hm.metadata["organism"] == DEFAULT_MODEL
    model, tokenizer = di.load_ar_baseline()
    assert type(model).__name__ == "Gemma4ForCausalLM" and tokenizer.pad_token_id == PAD_ID


@pytest.mark.parametrize("task", toy4.TASKS)
def test_bundled_diffusion_accuracy_matches_the_documented_figure(hooked_diffusion, task):
    doc = _documented(bundled_diffusion_path("toy4"))["tasks"][task]["accuracy"]
    res = evaluate_task(hooked_diffusion, task, n=SAMPLE_N, batch_size=SAMPLE_N)
    assert abs(res["accuracy"] - doc) <= _tolerance(doc, SAMPLE_N), (res["accuracy"], doc, res["failures"])
    assert 1 <= res["mean_steps_per_canvas"] <= hooked_diffusion.model.generation_config.max_denoising_steps


@pytest.mark.parametrize("task", toy4.TASKS)
def test_bundled_ar_accuracy_matches_the_documented_figure(ar_baseline, task):
    doc = _documented(bundled_ar_path("toy4"))["tasks"][task]["accuracy"]
    res = evaluate_task(ar_baseline.model, task, n=SAMPLE_N, batch_size=SAMPLE_N, model_kind="ar")
    assert abs(res["accuracy"] - doc) <= _tolerance(doc, SAMPLE_N), (res["accuracy"], doc, res["failures"])


def test_predict_takes_the_ar_wrapper_or_its_model(ar_baseline):
    from diffinterp.organisms.evaluate import predict

    prompts = [e.prompt for e in catalog.task("arith").test_set(3)]
    assert predict(ar_baseline, prompts, model_kind="ar") == predict(ar_baseline.model, prompts, model_kind="ar")
    with pytest.raises(ValueError, match="model_kind='ar'"):
        predict(ar_baseline, prompts)


def test_hooked_generate_matches_hf_generate_on_the_bundled_model(hooked_diffusion):
    ids, mask = prompt_batch([e.prompt for e in catalog.task("arith").test_set(4)])
    torch.manual_seed(0)
    ours = hooked_diffusion.generate(ids, attention_mask=mask).sequences
    torch.manual_seed(0)
    theirs = hooked_diffusion.model.generate(input_ids=ids, attention_mask=mask).sequences
    assert torch.equal(ours, theirs)


# ---------------------------------------------------------------- loading errors
def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_corrupted_folders_fail_with_clear_errors(tmp_path):
    from diffinterp.core.loading import load_model

    bad_json = _copy(bundled_diffusion_path("toy4"), tmp_path / "bad_json")
    (bad_json / "config.json").write_text('{"model_type": "diffusion_gemma", ')
    with pytest.raises(ValueError, match="corrupted"):
        load_model(bad_json)
    truncated = _copy(bundled_diffusion_path("toy4"), tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(ValueError, match="could not load"):
        load_model(truncated)
    ar_truncated = _copy(bundled_ar_path("toy4"), tmp_path / "ar_truncated")
    weights = ar_truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(ValueError, match="could not load"):
        load_ar_baseline(ar_truncated)
    no_weights = _copy(bundled_ar_path("toy4"), tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_ar_baseline(no_weights)


def test_folders_of_the_other_architecture_are_refused():
    from diffinterp.core.loading import load_model

    with pytest.raises(ValueError, match="gemma4_text"):
        load_model(bundled_ar_path("toy4"))
    with pytest.raises(ValueError, match="diffusion_gemma"):
        load_ar_baseline(bundled_diffusion_path("toy4"))


def test_eval_command_prints_json(capsys):
    import argparse

    from diffinterp.cli.organisms import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--task", "seq", "--model", "toy4", "--ar", "--n", "8", "--json"])
    assert args.func(args) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"task", "accuracy", "ci_low", "ci_high", "n"} <= row.keys() and row["n"] == 8 and row["task"] == "seq"


def test_eval_command_passes_the_bottleneck_to_the_sampler(capsys):
    import argparse

    from diffinterp.cli.organisms import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["eval", "--task", "mon", "--model", "toy4", "--n", "8", "--bottleneck", "topk:3", "--json"]
    )
    assert args.func(args) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["bottleneck"] == "topk:3" and row["n"] == 8 and row["mean_steps_per_canvas"] >= 1


def test_eval_command_saves_results_with_per_case_tallies(tmp_path, capsys):
    import argparse

    from diffinterp.cli.organisms import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "eval_results.json"
    args = parser.parse_args(
        ["eval", "--task", "hop", "--model", "toy4", "--ar", "--n", "12", "--by-case", "--save", str(out)]
    )
    assert args.func(args) == 0
    saved = json.loads(out.read_text())["tasks"]["hop"]
    assert saved["n"] == 12 and sum(c["n"] for c in saved["by_case"].values()) == 12
    assert sum(c["correct"] for c in saved["by_case"].values()) == saved["correct"]
    assert {case.split(",")[0] for case in saved["by_case"]} <= {"2 hops", "3 hops", "4 hops"}
    printed = capsys.readouterr().out
    assert all(case in printed for case in saved["by_case"])


def test_eval_save_option_survives_nnsight_patching_every_object():
    # nnsight mounts a .save() on every object; argparse must still give --save's default (None)
    import argparse

    import nnsight  # noqa: F401

    from diffinterp.cli.organisms import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["eval", "--task", "seq"]).results_file is None
