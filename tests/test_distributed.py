"""Prompt sets split over processes with torchrun (gloo on CPU): the same batches, caches and
study metrics as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import diffinterp as di
from diffinterp.studies.prompts import prompt_set
from diffinterp.studies.runs import run_prompt_set

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SHARDED = """
import sys, torch
import diffinterp as di
from diffinterp.core.distributed import process_group
from diffinterp.studies.prompts import prompt_set
from diffinterp.studies.runs import run_prompt_set

with process_group() as (rank, size):
    hm = di.load_model("carry")
    ran = []
    original = hm.run_with_cache
    hm.run_with_cache = lambda *a, **k: ran.append(1) or original(*a, **k)
    ps = prompt_set(hm, "carry", 10)
    batches = list(run_prompt_set(hm, ps, batch_size=3, names_filter="decoder.blocks.0.hook_resid_post"))
    print(f"rank {rank} of {size} ran {len(ran)} chunks", flush=True)
    if rank == 0:
        torch.save([(b.rows, b.trajectory.sequences, dict(b.cache.items()), b.predictions, b.correct) for b in batches],
                   sys.argv[1])
"""


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*TORCHRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_run_alternate_chunks_and_yield_every_batch_in_order(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    done = torchrun([str(script), str(tmp_path / "batches.pt")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2 ran 2 chunks" in done.stdout and "rank 1 of 2 ran 2 chunks" in done.stdout
    sharded = torch.load(tmp_path / "batches.pt", weights_only=False)
    hm = di.load_model("carry")
    alone = list(
        run_prompt_set(hm, prompt_set(hm, "carry", 10), batch_size=3, names_filter="decoder.blocks.0.hook_resid_post")
    )
    assert [rows for rows, *_ in sharded] == [b.rows for b in alone] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    for (_, sequences, cache, predictions, correct), batch in zip(sharded, alone, strict=True):
        assert torch.equal(sequences, batch.trajectory.sequences) and predictions == batch.predictions
        assert torch.equal(correct, batch.correct)
        assert cache.keys() == dict(batch.cache.items()).keys()
        assert all(torch.equal(tensor, batch.cache.get(*key)) for key, tensor in cache.items())


def test_a_study_under_torchrun_writes_the_metrics_of_one_process(tmp_path, warm_python):
    flags = ["case-study", "self-correction", "--examples", "6", "--max-denoising-steps", "6"]
    done = torchrun(["-m", "diffinterp.cli", *flags, "--out", str(tmp_path / "two")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "split over 2 processes" in done.stdout
    alone = warm_python.run(["-m", "diffinterp.cli", *flags, "--out", str(tmp_path / "one")], cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one == two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # rank 1 wrote nothing here


def test_eval_under_torchrun_splits_the_batches_and_scores_as_one_process(tmp_path, warm_python):
    flags = ["eval", "--model", "carry", "--examples", "12", "--batch-size", "4", "--json"]
    done = torchrun(["-m", "diffinterp.cli", *flags, "--save", str(tmp_path / "two.json")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = warm_python.run(["-m", "diffinterp.cli", *flags, "--save", str(tmp_path / "one.json")], cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]

    def scores(text: str) -> list[dict]:
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert scores(done.stdout) == scores(alone.stdout) and len(scores(alone.stdout)) == 1
    assert "split over 2 processes" in done.stdout
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one == two  # the saved results hold no timings: byte-for-byte the same figures
