"""A batched step × layer patching sweep against its compute floor: the same forward passes, bare.

The sweep (``patching.step_layer_sweep``, free-running, ``decoder.blocks.{l}.hook_resid_post`` at
every step and layer, hop prompt pairs on toy4, every step run) is run once with the model's
``forward`` wrapped to keep a copy of every call's inputs: the target's replay (one pass per
step) and each batched forward of patched rows. The floor is those very calls again, with no
hook attached and nothing between them: what the sweep must compute. Then the sweep and the
floor alternate ``--repeats`` times in this process; the report gives medians and their ratio
per prompt count (wall-clock, and the process's CPU time, which other jobs on a shared machine do
not inflate), and the share of one sweep's time spent inside the forward passes (the rest is the
sampler's own work per step and the patch hooks).

    python benchmarks/patching_floor.py [--prompts 1 4 16] [--repeats 5] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patching_sweep import full_schedule, setup  # noqa: E402

import diffinterp as di  # noqa: E402
from diffinterp.core.sampler import snapshot_cache  # noqa: E402
from diffinterp.instruments import patching as pt  # noqa: E402


def captured_forwards(hm, sweep) -> list[dict]:
    """Run ``sweep()`` with ``hm.model.forward`` wrapped; the inputs of every call (KV caches as
    they were before the call: a forward may extend its own copy)."""
    model = hm.model
    calls: list[dict] = []
    original = model.forward

    def recording(**kwargs):
        calls.append({**kwargs, "past_key_values": snapshot_cache(kwargs["past_key_values"])})
        return original(**kwargs)

    model.forward = recording
    try:
        sweep()
    finally:
        del model.forward
    return calls


def forward_share(hm, sweep) -> float:
    """The share of one sweep's wall time spent inside the model's forward passes."""
    model = hm.model
    original, inside = model.forward, []

    def timed(**kwargs):
        start = time.perf_counter()
        try:
            return original(**kwargs)
        finally:
            inside.append(time.perf_counter() - start)

    model.forward = timed
    try:
        start = time.perf_counter()
        sweep()
        total = time.perf_counter() - start
    finally:
        del model.forward
    return sum(inside) / total


def floor(hm, calls: list[dict]) -> None:
    with torch.no_grad():
        for kwargs in calls:
            hm.model(**{**kwargs, "past_key_values": snapshot_cache(kwargs["past_key_values"])})


def build_sweep(hm, prompts: int):
    """The sweep on ``prompts`` hop pairs (a zero-argument callable), the forward calls it makes
    (the floor replays them: ``floor(hm, calls)``), and its number of steps."""
    clean, cache, corrupt, _, metric, _ = setup(hm, prompts, **full_schedule(hm))
    n_steps = corrupt.block(0).n_steps

    def sweep():
        return pt.step_layer_sweep(hm, clean, corrupt, cache, metric, steps=range(n_steps))

    return sweep, captured_forwards(hm, sweep), n_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy4", help="a model speaking toy4's tasks (its prompts are hop pairs)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="out/benchmarks/patching_floor.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hm = di.load_model(args.model)
    rows = []
    for prompts in args.prompts:
        sweep, calls, n_steps = build_sweep(hm, prompts)
        times = {"sweep": [], "floor": []}
        cpu = {"sweep": [], "floor": []}  # process CPU time: what other jobs on a shared machine cannot add
        for round_ in range(args.repeats):
            for name in ("sweep", "floor") if round_ % 2 == 0 else ("floor", "sweep"):
                start, start_cpu = time.perf_counter(), time.process_time()
                sweep() if name == "sweep" else floor(hm, calls)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        medians = {k: statistics.median(v) for k, v in times.items()}
        cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
        share = forward_share(hm, sweep)
        rows.append(
            {
                "prompts": prompts,
                "steps": n_steps,
                "layers": hm.text_config.num_hidden_layers,
                "forward_calls": len(calls),
                "rows_per_call_max": max(c["decoder_input_ids"].shape[0] for c in calls),
                "sweep_s": medians["sweep"],
                "floor_s": medians["floor"],
                "ratio": medians["sweep"] / medians["floor"],
                "sweep_cpu_s": cpu_medians["sweep"],
                "floor_cpu_s": cpu_medians["floor"],
                "cpu_ratio": cpu_medians["sweep"] / cpu_medians["floor"],
                "forward_share": share,
            }
        )
        r = rows[-1]
        print(
            f"{prompts:3d} prompts, {n_steps} steps x {r['layers']} layers: {r['forward_calls']} forward passes "
            f"(up to {r['rows_per_call_max']} rows); sweep {r['sweep_s']:.3f} s, floor {r['floor_s']:.3f} s "
            f"-> {r['ratio']:.3f}x (CPU time {r['sweep_cpu_s']:.3f} s / {r['floor_cpu_s']:.3f} s -> {r['cpu_ratio']:.3f}x); "
            f"{r['forward_share']:.1%} of a sweep inside the forward passes",
            flush=True,
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "threads": args.threads, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
