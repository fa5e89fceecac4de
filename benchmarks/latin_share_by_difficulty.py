"""Would harder Latin puzzles lower `latin`'s step-0 share? Share by the puzzle's early-round fraction.

    python benchmarks/latin_share_by_difficulty.py [--n 400] [--threads 1]

Runs the shipped `latin` checkpoint on the held-out puzzles (the shipped sampler, seeded as
``benchmarks/organism_gates.py`` seeds) and reports, for the puzzles whose share of blank cells
forced in propagation rounds 1-2 is at most q, the share of blank cells whose final token equals
the step-0 argmax (issue 12's bar: <= 0.70), with its Wilson 95% interval. A task filter
that keeps only such puzzles would move the organism's number this far (before any retraining).
Numbers quoted in docs/model.md; about 2 minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffinterp.core.loading import load_model  # noqa: E402
from diffinterp.organisms.catalog import task  # noqa: E402
from diffinterp.stats import proportion  # noqa: E402

THRESHOLDS = (1.0, 0.4, 0.3, 0.25, 0.2)


def per_puzzle(hm, examples, batch_size: int, seed: int) -> list[tuple[float, int, int]]:
    """Per puzzle: (fraction of blank cells in rounds 1-2, blanks equal to the step-0 argmax, blanks)."""
    spec, out = task("latin"), []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask = hm.to_tokens([e.prompt for e in chunk])
        torch.manual_seed(seed + start)
        record = hm.generate(ids, attention_mask=mask).block(0)
        step0, final = record.steps[0].argmax.cpu(), record.final_canvas.cpu()
        for row, example in enumerate(chunk):
            truth = spec.truth(example)
            blanks = truth["focus"]
            same = sum(int(step0[row, p] == final[row, p]) for p in blanks)
            early = sum(truth["round"][p] <= 2 for p in blanks) / len(blanks)
            out.append((early, same, len(blanks)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = per_puzzle(load_model("latin"), task("latin").test_set(args.n), args.batch_size, args.seed)
    print("early-round fraction <= q | puzzles | blank cells equal to the step-0 argmax (95% CI)")
    for q in THRESHOLDS:
        kept = [r for r in rows if r[0] <= q]
        if not kept:
            continue
        share = proportion(sum(r[1] for r in kept), sum(r[2] for r in kept))
        print(f"{q:.2f} | {len(kept)} | {share['value']:.3f} [{share['ci_low']:.3f}, {share['ci_high']:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
