"""The sampler's per-step entropy: read from transformers' ``accept_canvas`` against recomputed.

``EntropyBoundSampler.accept_canvas`` computes every position's entropy to rank positions; the
instrumented sampler records it. Two ways, timed side by side in this process on the same logits:

* recompute: ``accept_canvas`` then ``token_entropy`` (a second pass over ``[batch, canvas, vocab]``);
* read: ``accept_canvas`` under a ``TorchFunctionMode`` that keeps its sort's input (no second
  pass, but a Python call per torch operation inside ``accept_canvas``).

Both entropies are checked bit-identical first. The crossover sets ``sampler.READ_ENTROPY_FROM``.

    python benchmarks/entropy_read.py [--threads 1] [--json out/benchmarks/entropy_read.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
)

from diffinterp.core.sampler import READ_ENTROPY_FROM, _SortInput, token_entropy

SHAPES = [(1, 12, 64), (4, 12, 64), (4, 32, 128), (4, 32, 256), (2, 64, 512), (2, 256, 4096), (1, 256, 65536)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="out/benchmarks/entropy_read.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"READ_ENTROPY_FROM = {READ_ENTROPY_FROM} logits elements; µs per step, medians of {args.rounds} rounds")
    for shape in SHAPES:
        sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.4), shape[1], shape[2], 32)
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(*shape, generator=generator) * 3
        current = torch.randint(0, shape[-1], shape[:2], generator=generator)
        sampled = torch.randint(0, shape[-1], shape[:2], generator=generator)

        def recompute(current=current, sampled=sampled, logits=logits, sampler=sampler):
            sampler.accept_canvas(current, sampled, logits, 3)
            return token_entropy(logits)

        def read(current=current, sampled=sampled, logits=logits, sampler=sampler):
            with _SortInput() as sort_input:
                sampler.accept_canvas(current, sampled, logits, 3)
            return sort_input.tensor

        assert torch.equal(read(), recompute()), shape
        calls = max(2, min(2000, int(2e6 / logits.numel())))
        times = {"recompute": [], "read": []}
        for round_ in range(args.rounds):
            for name in ("recompute", "read") if round_ % 2 == 0 else ("read", "recompute"):
                fn = recompute if name == "recompute" else read
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[name].append((time.perf_counter() - start) / calls * 1e6)
        medians = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "shape": list(shape),
            "elements": logits.numel(),
            **medians,
            "read_over_recompute": medians["read"] / medians["recompute"],
        }
        rows.append(row)
        path = "read" if logits.numel() >= READ_ENTROPY_FROM else "recompute"
        print(f"  {str(shape):18s} {logits.numel():>10d}  recompute {medians['recompute']:10.1f}  read {medians['read']:10.1f}"
              f"  read/recompute x{row['read_over_recompute']:.3f}  (sampler uses: {path})")  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "read_from": READ_ENTROPY_FROM, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
