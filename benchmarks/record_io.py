"""DenoisingCache save / load against raw safetensors on the same tensors, side by side in one process.

    python benchmarks/record_io.py [--mib 128] [--repeats 3] [--json out/benchmarks/record_io.json]

The floor is ``safetensors.torch.save_file`` / ``load_file`` on the very tensors the cache holds
(the cache's extra work: a CRC-32 per tensor on save and load, and the schema checks). The save's
peak extra memory is measured in a child process (``ru_maxrss`` above the cache already in
memory): a streaming save stays near one tensor, a clone-first save near the whole cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffinterp.records.cache import DenoisingCache

MIB = 2**20


def build_cache(mib: int, tensor_mib: int = 4) -> DenoisingCache:
    cache = DenoisingCache()
    generator = torch.Generator().manual_seed(0)
    per = tensor_mib * MIB // 4
    for index in range(max(1, mib // tensor_mib)):
        cache.add(f"decoder.blocks.{index % 8}.hook_resid_post", index // 8, 0, torch.randn(per, generator=generator))
    return cache


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# Peak resident memory inside a child process, from /proc (Linux): ``ru_maxrss`` would not do, as
# a child's starts at the parent's resident size at fork (the kernel carries it over exec), which
# hides anything smaller than this benchmark process. Writing 5 to clear_refs resets the peak.
PEAK = (
    "def status(key): return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) / 1024\n"
    "def reset_peak(): open('/proc/self/clear_refs', 'w').write('5'); return status('VmRSS:')\n"
)


def _child_mib(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", PEAK + code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def peak_extra_mib(mib: int) -> float:
    """Peak resident memory a save adds above the cache itself, in a fresh process."""
    return _child_mib(
        "import sys, tempfile; sys.path.insert(0, 'benchmarks'); from record_io import build_cache\n"
        f"cache = build_cache({mib}); before = reset_peak()\n"
        "with tempfile.TemporaryDirectory() as folder: cache.save(folder + '/c.safetensors')\n"
        "print(status('VmHWM:') - before)"
    )


def load_peak_extra_mib(path: Path) -> float:
    """Peak resident memory a load of ``path`` adds (the loaded cache included), in a fresh process:
    one copy of the data is the file's size; a loader that copies each tensor again (or keeps the
    file mapped while copying out of it) peaks higher."""
    return _child_mib(
        "from diffinterp.records.cache import DenoisingCache\nbefore = reset_peak()\n"
        f"cache = DenoisingCache.load({str(path)!r})\n"
        "print(status('VmHWM:') - before)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="cache size in MiB (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs (default 3)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    cache = build_cache(args.mib)
    tensors = {f"t{i}": tensor for i, tensor in enumerate(cache._store.values())}
    with tempfile.TemporaryDirectory() as folder:
        ours, raw = Path(folder, "cache.safetensors"), Path(folder, "raw.safetensors")
        cache.save(ours)
        save_file(tensors, str(raw))
        result = {
            "mib": args.mib,
            "repeats": args.repeats,
            "save_s": timed(lambda: cache.save(ours), args.repeats),
            "save_file_s": timed(lambda: save_file(tensors, str(raw)), args.repeats),
            "load_s": timed(lambda: DenoisingCache.load(ours), args.repeats),
            "load_file_s": timed(lambda: load_file(str(raw)), args.repeats),
            # load_file maps the file lazily; reading every tensor once is the fair floor for a load
            # that verifies (and for any use of the data)
            "load_file_read_s": timed(lambda: [t.sum() for t in load_file(str(raw)).values()], args.repeats),
        }
        result["load_peak_extra_mib"] = load_peak_extra_mib(ours)
        loaded = DenoisingCache.load(ours)
        assert all(torch.equal(loaded._store[key], value) for key, value in cache._store.items())
    result["save_ratio"] = result["save_s"] / result["save_file_s"]
    result["load_ratio"] = result["load_s"] / result["load_file_read_s"]
    result["save_peak_extra_mib"] = peak_extra_mib(args.mib)
    print(
        f"{args.mib} MiB cache, median of {args.repeats}:\n"
        f"  save  {result['save_s']:.3f} s vs save_file {result['save_file_s']:.3f} s  -> {result['save_ratio']:.2f}x\n"
        f"  load  {result['load_s']:.3f} s vs load_file + one read {result['load_file_read_s']:.3f} s"
        f"  -> {result['load_ratio']:.2f}x (load_file alone, lazily mapped: {result['load_file_s']:.3f} s)\n"
        f"  save's peak extra memory: {result['save_peak_extra_mib']:.1f} MiB (the cache: {args.mib} MiB)\n"
        f"  load's peak memory: {result['load_peak_extra_mib']:.1f} MiB (one copy of the data: {args.mib} MiB)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
