"""Executed instructions instead of wall time: the peers, patching-floor and per-call hook jobs under callgrind.

Wall-clock ratios of these jobs on the project's shared 2-core machines move by about ±10% from
run to run, and the process's CPU time moves with them (docs/benchmarks.md), so a 2–5% bar can be
neither met nor missed by a clock. The number of instructions a job executes does not depend on
what else the machine is doing. This script runs the same contenders as ``peers.py`` (diffinterp's
``run_with_cache``, hand-written cloning torch hooks around HF ``generate``, plain ``generate``,
optionally nnsight) or ``patching_floor.py`` (the batched sweep and its bare forward passes) in one
process under valgrind's callgrind, with instrumentation switched on just for each contender's
call (``CALLGRIND_START_INSTRUMENTATION`` and ``ZERO_STATS`` before, ``DUMP_STATS_AT`` after,
through a three-function C helper compiled here with gcc), in rotating order, after each has run
once uncounted (the peers' checks that every contender captured the same tensors).

What the count is and is not: user-space instructions of the whole process during the call
(Python, torch's kernels, the allocator), not cycles. A memory-bound copy and a fused
multiply-add count one each, and valgrind's virtual CPU has no AVX-512, so torch and MKL dispatch
their AVX2 kernels under it (more instructions per matmul than on an AVX-512 machine). The
instructions spent in functions compiled for the vector instruction set are summed too, and each
ratio is printed a second time with them halved (as if the native kernels did the same work in half
the instructions); a bar is reported met only when both ratios are under it.

    python benchmarks/instructions.py peers [--model carry] [--batch 1 4] [--jobs resid_post all_hooks]
                                            [--all-steps] [--nnsight] [--repeats 2] [--json FILE]
    python benchmarks/instructions.py patching-floor [--model toy4] [--prompts 1 4] [--repeats 2] [--json FILE]
    python benchmarks/instructions.py hook-call [--model carry] [--batch 1] [--calls 2000] [--json FILE]
    ... [--keep-dumps DIR]      also keep callgrind's dumps (one per counted call)
    ... --from-dumps DIR        summarise kept dumps; run nothing

Needs valgrind (with its headers, ``valgrind/callgrind.h``) and gcc; under valgrind a job runs
about 50–100× slower than on the bare CPU, and importing torch takes about a minute.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HELPER_SOURCE = r"""
#include <valgrind/callgrind.h>
void counting_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void counting_stop(const char *label) { CALLGRIND_DUMP_STATS_AT(label); CALLGRIND_STOP_INSTRUMENTATION; }
int counting_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
"""
# Which contender each job is measured against.
FLOORS = {"resid_post": "resid_post/torch_hooks", "all_hooks": "all_hooks/torch_hooks", "patching": "floor"}
BARS = {"resid_post": 1.02, "all_hooks": 1.05, "patching": 1.15}


def compile_helper(folder: Path) -> Path:
    """The C helper, built with gcc into ``folder``; a clear error if gcc or valgrind's header is missing."""
    if shutil.which("gcc") is None:
        raise SystemExit("instructions.py needs gcc to build its callgrind helper (apt install gcc)")
    source, library = folder / "counting.c", folder / "counting.so"
    source.write_text(HELPER_SOURCE)
    built = subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], capture_output=True, text=True
    )
    if built.returncode != 0:
        raise SystemExit(
            f"could not build the callgrind helper (is valgrind's header valgrind/callgrind.h installed?):\n{built.stderr}"
        )
    return library


# Functions compiled for one vector instruction set: torch's per-ISA kernels (at::native::AVX2::...,
# Sleef_*avx2) and MKL's (mkl_blas_avx2_*). Under valgrind they are the AVX2 builds.
VECTOR_KERNEL = re.compile(r"AVX2|avx2")


def read_dump(path: Path) -> tuple[str, int, int] | None:
    """(label, instructions, instructions in vector kernels) of one callgrind dump; None for the
    dump valgrind writes at exit (no client-request label)."""
    label = total = None
    names: dict[str, str] = {}
    own: dict[str, int] = {}
    current, after_call = None, False
    with path.open(errors="replace") as lines:
        for line in lines:
            if after_call:  # the cost line after calls= is the callee's inclusive cost, not this function's
                after_call = False
                continue
            if line.startswith("desc: Trigger: Client Request: "):
                label = line.removeprefix("desc: Trigger: Client Request: ").strip()
            elif line.startswith(("summary: ", "totals: ")) and total is None:
                total = int(line.split()[1])
            elif line.startswith(("fn=", "cfn=")):
                match = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.strip())
                if match.group(2):
                    names[match.group(1)] = match.group(2)
                if line.startswith("fn="):
                    current = match.group(1)
            elif line.startswith("calls="):
                after_call = True
            elif current is not None and line[:1] in "0123456789+-*":
                parts = line.split()
                if len(parts) >= 2:
                    own[current] = own.get(current, 0) + int(parts[1])
    if label is None or total is None:
        return None
    vector = sum(cost for fn, cost in own.items() if VECTOR_KERNEL.search(names.get(fn, "")))
    return label, total, vector


def read_dumps(folder: Path) -> dict[str, tuple[int, int]]:
    """label -> (instructions, in vector kernels), from every callgrind dump in ``folder``."""
    counts = {}
    for path in sorted(folder.glob("callgrind.out.*")):
        found = read_dump(path)
        if found is not None:
            counts[found[0]] = found[1:]
    return counts


# --- inside valgrind -------------------------------------------------------------------------


def peers_contenders(args) -> dict:
    import peers

    import diffinterp as di

    hm = di.load_model(args.model)
    lm = peers.nnsight_model(args.model, hm)[0] if args.nnsight else None
    contenders = {}
    for batch in args.batch:
        found, _, _ = peers.build_contenders(hm, lm, batch, model=args.model, all_steps=args.all_steps, jobs=args.jobs)
        contenders.update({f"batch {batch}: {name}": fn for name, fn in found.items()})
    return contenders


def patching_contenders(args) -> dict:
    import patching_floor

    import diffinterp as di

    hm = di.load_model(args.model)
    contenders = {}
    for prompts in args.prompts:
        sweep, calls, _ = patching_floor.build_sweep(hm, prompts)
        contenders[f"prompts {prompts}: sweep"] = sweep
        contenders[f"prompts {prompts}: floor"] = lambda calls=calls: patching_floor.floor(hm, calls)
    return contenders


def hook_call_contenders(args) -> dict:
    """One HF norm module called ``--calls`` times: alone, with a hand-written cloning torch hook,
    with diffinterp's caching tap, with a diffinterp user hook storing into a cache (``hook_call.py``)."""
    from contextlib import nullcontext

    import torch
    from hook_call import removing

    import diffinterp as di
    from diffinterp.records.cache import DenoisingCache, caching_taps

    hm = di.load_model(args.model)
    name = "decoder.blocks.0.hook_attn_out"
    module = hm.model.model.decoder.layers[0].post_attention_layernorm
    x = torch.randn(args.batch[0], hm.model.config.canvas_length, hm.text_config.hidden_size)
    context = hm.context
    stored: list[torch.Tensor] = []

    def hand_hook(_module, _args, output):
        stored.append(output.detach().clone())

    def user_hooks():
        cache = DenoisingCache()
        return hm.hooks([(name, lambda tensor, hook: cache.add(hook.name, hook.step, hook.block, tensor))])

    attach = {
        "module alone": nullcontext,
        "hand-written torch hook": lambda: removing(module.register_forward_hook(hand_hook)),
        "diffinterp caching tap": lambda: hm.taps(caching_taps(DenoisingCache(), [name], None, where=context)),
        "diffinterp user hook": user_hooks,
    }

    def calls(key):
        def run():
            with torch.no_grad(), attach[key]():
                context.stack, context.block = "decoder", 0
                for step in range(args.calls):  # a new key each call, as over a trajectory
                    context.step = step
                    module(x)
                context.stack = context.block = context.step = None
                stored.clear()

        return run

    return {key: calls(key) for key in attach}


def count_in_child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    helper = ctypes.CDLL(args.helper)
    helper.counting_stop.argtypes = [ctypes.c_char_p]
    if not helper.counting_on_valgrind():
        raise SystemExit("--child runs only under valgrind; run the script without it")
    build = {"peers": peers_contenders, "patching-floor": patching_contenders, "hook-call": hook_call_contenders}
    contenders = build[args.bench](args)
    if args.bench == "hook-call":
        for run in contenders.values():
            run()  # uncounted: the first calls warm the allocator and the hook machinery
    order = list(contenders)
    for round_ in range(args.repeats):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            gc.collect()
            helper.counting_start()
            contenders[name]()
            helper.counting_stop(f"{name} #{round_}".encode())
            print(f"counted {name} #{round_}", flush=True)


# --- outside ---------------------------------------------------------------------------------


def summarise(counts: dict[str, tuple[int, int]], repeats: int) -> dict:
    """Per contender: every round's count, the median, the spread, the median in vector kernels;
    per job: the ratio to its floor, and the same ratio with every vector kernel's count halved
    (``ratio_if_kernels_halved``: the bare machine's AVX-512 kernels run at most about half the
    instructions of the AVX2 ones valgrind runs, so the hooks' share of the native work is at most
    that much larger)."""
    per: dict[str, list[tuple[int, int]]] = {}
    for label, value in counts.items():
        name, _, _ = label.rpartition(" #")
        per.setdefault(name, []).append(value)
    missing = [name for name, values in per.items() if len(values) != repeats]
    if missing:
        raise SystemExit(f"callgrind dumps missing for {missing}: the child did not finish (see its output)")
    rows = {}
    for name, values in per.items():
        totals = [total for total, _ in values]
        rows[name] = {
            "instructions": totals,
            "median": statistics.median(totals),
            "spread": (max(totals) - min(totals)) / statistics.median(totals),
            "vector_kernels": statistics.median(vector for _, vector in values),
        }
    for name, row in rows.items():
        group, _, contender = name.partition(": ")
        job = contender.split("/")[0] if "/" in contender else ("patching" if group.startswith("prompts") else None)
        floor = f"{group}: {FLOORS[job]}" if job in FLOORS else None
        if floor in rows and floor != name:
            row["vs"] = FLOORS[job]
            row["ratio"] = row["median"] / rows[floor]["median"]
            halved = rows[floor]["median"] - rows[floor]["vector_kernels"] / 2
            row["ratio_if_kernels_halved"] = (row["median"] - row["vector_kernels"] / 2) / halved
            row["bar"] = BARS[job]
        if f"{group}: hf_generate" in rows:
            row["vs_hf_generate"] = row["median"] / rows[f"{group}: hf_generate"]["median"]
    return rows


def per_call(rows: dict, calls: int) -> dict:
    """hook-call: instructions per call, and over the module alone and the hand-written hook."""
    each = {name: row["median"] / calls for name, row in rows.items()}
    return {
        name: {
            "per_call": value,
            "over_module": value - each["module alone"],
            "over_hand_written_hook": value - each["hand-written torch hook"],
        }
        for name, value in each.items()
    }


def report(rows: dict, calls: dict | None = None) -> None:
    if calls is not None:
        print("instructions per call (medians of the rounds):")
        for name, row in calls.items():
            print(
                f"  {name:<26} {row['per_call']:10.0f}   +{row['over_module']:8.0f} over the module alone   "
                f"{row['over_hand_written_hook']:+8.0f} vs the hand-written hook"
            )
        return
    for name, row in rows.items():
        line = (
            f"{name:<40} {row['median'] / 1e6:10.1f} M instructions (spread {row['spread']:.2%}; "
            f"{row['vector_kernels'] / row['median']:.0%} in vector kernels)"
        )
        if "vs_hf_generate" in row:
            line += f"   x{row['vs_hf_generate']:.4f} hf_generate"
        if "ratio" in row:
            worst = max(row["ratio"], row["ratio_if_kernels_halved"])
            verdict = "met" if worst <= row["bar"] else "MISSED"
            line += (
                f"   x{row['ratio']:.4f} {row['vs']} (x{row['ratio_if_kernels_halved']:.4f} with kernels halved; "
                f"bar {row['bar']:.2f}: {verdict})"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", choices=["peers", "patching-floor", "hook-call"])
    parser.add_argument("--model", default=None, help="default: carry for peers, toy4 for patching-floor")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="peers: batch sizes")
    parser.add_argument("--jobs", nargs="+", choices=["resid_post", "all_hooks"], default=["resid_post", "all_hooks"])
    parser.add_argument("--all-steps", action="store_true", help="peers: every block runs max_denoising_steps")
    parser.add_argument("--nnsight", action="store_true", help="peers: count nnsight too (slow under valgrind)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4], help="patching-floor: prompt counts")
    parser.add_argument("--calls", type=int, default=2000, help="hook-call: calls per counted round")
    parser.add_argument("--repeats", type=int, default=2, help="counted rounds (counts barely move: 2 show it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="default out/benchmarks/instructions_{bench}.json")
    parser.add_argument("--keep-dumps", default=None, help="also copy callgrind's dumps into this folder")
    parser.add_argument("--from-dumps", default=None, help="summarise the dumps kept in this folder; run nothing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--helper", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        args.model = "toy4" if args.bench == "patching-floor" else "carry"
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.child:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        count_in_child(args)
        return
    if shutil.which("valgrind") is None and args.from_dumps is None:
        raise SystemExit("instructions.py counts under valgrind, which is not installed (apt install valgrind)")

    if args.from_dumps is not None:
        rows = summarise(read_dumps(Path(args.from_dumps)), args.repeats)
        finish(args, rows)
        return
    with tempfile.TemporaryDirectory(prefix="diffinterp-callgrind-") as tmp:
        folder = Path(tmp)
        helper = compile_helper(folder)
        child = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", "--helper", str(helper)]
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={folder}/callgrind.out",
            *child,
        ]
        print("running: " + " ".join(command[:4]) + " python " + " ".join(sys.argv), flush=True)
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        finished = subprocess.run(command, env=env)
        if finished.returncode != 0:
            raise SystemExit(f"the counted run failed (exit {finished.returncode}); its output is above")
        if args.keep_dumps is not None:
            kept = Path(args.keep_dumps)
            kept.mkdir(parents=True, exist_ok=True)
            for dump in folder.glob("callgrind.out.*"):
                shutil.copy2(dump, kept / dump.name)
        rows = summarise(read_dumps(folder), args.repeats)
    finish(args, rows)


def finish(args, rows: dict) -> None:
    calls = per_call(rows, args.calls) if args.bench == "hook-call" else None
    report(rows, calls)
    out = Path(args.json or f"out/benchmarks/instructions_{args.bench.replace('-', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "helper", "json")}
    result = {"settings": settings, "contenders": rows, **({"per_call": calls} if calls else {})}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
