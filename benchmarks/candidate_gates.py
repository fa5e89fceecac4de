"""The loop gate's two numbers for candidate checkpoints of one organism, before one is shipped.

    python benchmarks/candidate_gates.py --organism latin DIR [DIR ...] [--n 400] [--offset 0] [--threads 1]

For each checkpoint folder: full-run exact match, one-pass exact match (``max_denoising_steps=1``)
and the share of focus tokens equal to the step-0 argmax, on the organism's held-out examples,
measured exactly as ``benchmarks/organism_gates.py`` measures the shipped one (same examples,
batches and seeds), with 95% Wilson intervals. It skips the step curve and the AR twin, so a
training run can be judged in minutes (about 3 per folder on one core for `latin`); the candidate
that meets both bars is then shipped and the full table rerun. ``--offset 400`` measures the next
400 held-out examples instead, a validation slice disjoint from the reported set, so that choosing
among candidates does not select on the numbers the docs report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from organism_gates import focus_step0  # noqa: E402

from diffinterp.core.loading import load_model  # noqa: E402
from diffinterp.organisms.catalog import ORGANISMS, task  # noqa: E402
from diffinterp.organisms.evaluate import evaluate_task  # noqa: E402


def candidate_rows(folder: str, organism: str, n: int, batch_size: int, seed: int, offset: int = 0) -> list[str]:
    hm = load_model(folder)
    rows = []
    for task_name in ORGANISMS[organism].tasks:
        examples = task(task_name).test_set(n, offset=offset)
        full = evaluate_task(hm, task_name, examples=examples, batch_size=batch_size, seed=seed)
        one = evaluate_task(hm, task_name, examples=examples, batch_size=batch_size, seed=seed, max_denoising_steps=1)
        share = focus_step0(hm, examples, batch_size, seed)
        rows.append(
            f"| {folder} | {task_name} | {full['accuracy']:.1%} [{full['ci_low']:.1%}, {full['ci_high']:.1%}] "
            f"| {one['accuracy']:.1%} | {share['value']:.3f} [{share['ci_low']:.3f}, {share['ci_high']:.3f}] |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="checkpoint folders (diffinterp train --out)")
    parser.add_argument("--organism", required=True, choices=sorted(ORGANISMS), help="whose tasks and focus")
    parser.add_argument("--n", type=int, default=400, help="held-out examples per task")
    parser.add_argument("--offset", type=int, default=0, help="skip this many held-out examples (400: validation)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| checkpoint | task | full run | one pass | focus tokens = step-0 argmax |")
    print("| --- | --- | --- | --- | --- |")
    for folder in args.folders:
        for row in candidate_rows(folder, args.organism, args.n, args.batch_size, args.seed, args.offset):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
