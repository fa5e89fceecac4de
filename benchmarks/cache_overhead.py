"""Wall time of recording a full-trajectory cache of every hook_resid_post vs plain HF generate.

All run in this one process on the same input and seed, interleaved in rotating order, so
machine load affects them alike; the report gives medians and their ratios.

    python benchmarks/cache_overhead.py [--model PATH] [--repeats 7] [--batch 4] [--threads N] [--all-steps]
                                        [--json out/benchmarks/cache_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import diffinterp as di
from diffinterp.core.loading import checkpoint_metadata
from diffinterp.core.sampler import never_stop_early


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="toy4",
        help="organism or DiffusionGemma folder (default toy4, as docs/benchmarks.md measured)",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--names", default="*hook_resid_post", help="hooks to cache (glob)")
    parser.add_argument(
        "--all-steps",
        action="store_true",
        help="disable adaptive stopping: every block runs max_denoising_steps (a longer trajectory)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default="out/benchmarks/cache_overhead.json")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of fewer runs are too noisy)")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hm = di.load_model(args.model)
    prompt = checkpoint_metadata(args.model).get("demo_prompt", "a=3 b=a+4 ? b")
    input_ids, mask = hm.to_tokens([prompt] * args.batch)
    kwargs = {"attention_mask": mask}
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.all_steps:
        kwargs.update(never_stop_early(hm.model.generation_config.max_denoising_steps))
    names = hm.resolve_names(args.names)

    def hf_generate():
        torch.manual_seed(0)
        return hm.model.generate(input_ids, **kwargs)

    def replay():
        torch.manual_seed(0)
        return hm.generate(input_ids, **kwargs)

    def cached():
        torch.manual_seed(0)
        return hm.run_with_cache(input_ids, names_filter=names, **kwargs)

    # Same result first: the comparison is only meaningful if all three generate the same tokens.
    reference = hf_generate().sequences
    assert torch.equal(replay().sequences, reference)
    trajectory, cache = cached()
    assert torch.equal(trajectory.sequences, reference)

    contenders = {"hf_generate": hf_generate, "replay_no_hooks": replay, "run_with_cache": cached}
    runs = {name: [] for name in contenders}
    order = list(contenders)
    for repeat in range(args.repeats):
        for name in order[repeat % 3 :] + order[: repeat % 3]:  # rotate so no one always runs first
            runs[name].append(timed(contenders[name]))
    medians = {name: statistics.median(times) for name, times in runs.items()}
    report = {
        "model": str(args.model or "bundled"),
        "batch": args.batch,
        "all_steps": args.all_steps,
        "steps_per_block": trajectory.steps_per_block,
        "hooks_cached": len(names),
        "cache_entries": len(cache),
        "cache_bytes": cache.nbytes,
        "repeats": args.repeats,
        "median_seconds": medians,
        "ratio_cache_vs_hf": medians["run_with_cache"] / medians["hf_generate"],
        "ratio_replay_vs_hf": medians["replay_no_hooks"] / medians["hf_generate"],
        "torch_threads": torch.get_num_threads(),
    }
    for name, value in medians.items():
        print(f"{name:<18} median {value * 1000:8.1f} ms over {args.repeats} runs")
    print(
        f"run_with_cache / hf_generate = {report['ratio_cache_vs_hf']:.3f}  "
        f"({len(names)} hooks, {len(cache)} entries, {cache.nbytes / 2**20:.1f} MiB)"
    )
    print(f"replay (no hooks) / hf_generate = {report['ratio_replay_vs_hf']:.3f}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
