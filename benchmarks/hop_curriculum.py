"""Does a hop curriculum help? Train a model with 0- and 1-hop examples mixed into the hop data.

The shipped recipe trains ``hop`` on 2-4 hops only, and both bundled models sit near 65% with a
shallow heuristic (docs/model.md). This experiment replaces the hop generator in the training
mixture by one that also emits 0-hop (``x=5 q=7 k=q ? x``: a direct lookup) and 1-hop chains,
with weights 1:1:2:2:2 for 0-4 hops, trains ``--model`` for ``--optimizer-steps`` steps, and reports exact
match per hop count on held-out prompts (the hash-held-out bucket, never trained on) — so it shows
whether the model learns even the direct lookup.

    python benchmarks/hop_curriculum.py [--model ar] [--optimizer-steps 2000] [--n 100] [--threads 1] [--json FILE]

Training only; not part of the tests (about 11 minutes for the AR twin on one core).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffinterp.organisms import catalog  # noqa: E402
from diffinterp.organisms import train as TR  # noqa: E402
from diffinterp.organisms.evaluate import predict  # noqa: E402
from diffinterp.organisms.families import toy4 as T  # noqa: E402
from diffinterp.organisms.task import Example, is_test_prompt  # noqa: E402
from diffinterp.stats import wilson_interval  # noqa: E402

HOP_WEIGHTS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2}


def curriculum_stream(seed: int):
    """The standard task mixture, but hop examples have 0-4 hops (weights :data:`HOP_WEIGHTS`)."""
    rng = random.Random(seed)
    tasks = T.TASKS
    weights = [T.TASK_WEIGHTS[t] for t in tasks]
    while True:
        task = rng.choices(tasks, weights=weights)[0]
        if task != "hop":
            yield catalog.task(task).sample(rng, split="train")
            continue
        hops = rng.choices(list(HOP_WEIGHTS), weights=list(HOP_WEIGHTS.values()))[0]
        while True:
            prompt, answer = T.hop_example(rng, hops)
            if not is_test_prompt(prompt):
                yield Example("hop", prompt, answer)
                break


def held_out_by_hops(hops: int, n: int, seed: int = 7) -> list[Example]:
    """``n`` distinct held-out (test-bucket) hop examples with exactly ``hops`` hops."""
    rng = random.Random(f"{seed}-{hops}")
    seen: dict[str, Example] = {}
    while len(seen) < n:
        prompt, answer = T.hop_example(rng, hops)
        if is_test_prompt(prompt):
            seen.setdefault(prompt, Example("hop", prompt, answer))
    return list(seen.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("ar", "diffusion"), default="ar")
    parser.add_argument("--optimizer-steps", type=int, default=2000)
    parser.add_argument("--n", type=int, default=100, help="held-out examples per hop count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    cfg = TR.TrainConfig(
        model=args.model, steps=args.optimizer_steps, seed=args.seed, threads=args.threads, eval_every=500, eval_n=48
    )
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        TR.train(cfg, tmp, stream=curriculum_stream(cfg.seed))
        if args.model == "ar":
            from diffinterp.organisms.twin import load_ar_baseline

            model = load_ar_baseline(tmp).model
        else:
            from diffinterp.core.loading import load_model

            model = load_model(tmp)
        torch.set_num_threads(args.threads)
        result = {
            "command": "python " + " ".join(sys.argv),
            "model": args.model,
            "steps": args.optimizer_steps,
            "by_hops": {},
        }
        for hops in HOP_WEIGHTS:
            exs = held_out_by_hops(hops, args.n)
            preds, _ = predict(model, [e.prompt for e in exs], model_kind=args.model)
            correct = sum(catalog.task("hop").accepts(p, e) for p, e in zip(preds, exs, strict=True))
            lo, hi = wilson_interval(correct, len(exs))
            result["by_hops"][hops] = {"correct": correct, "n": len(exs), "ci_low": lo, "ci_high": hi}
            print(f"{hops} hops: {correct}/{len(exs)}  95% CI [{lo:.2f}, {hi:.2f}]", flush=True)
    result["minutes"] = round((time.time() - t0) / 60, 1)
    if args.json:
        from diffinterp.studies.output import write_json_atomic

        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
