"""Wall time of a step × layer activation-patching sweep: batched vs a loop of single patches.

The sweep patches ``decoder.blocks.{layer}.hook_resid_post`` (all canvas positions) from clean
``hop`` prompts into corrupted ones (the answer-bearing value changed) at every (step, layer), in
free-running mode (each patched run generates the rest of the block, replaying the clean run's
random draws), scored by the answer's logit difference at the last step. The loop is one
``hm.run_with_hooks(..., replay=clean)`` generation per (step, layer)
(``patching.step_layer_sweep(batched=False)``); the batched sweep is ``step_layer_sweep()``.
Both run in this process on the same inputs, alternating, ``--repeats`` times; the report gives
the medians, their ratio, and the largest difference between the two sweeps' values.

    python benchmarks/patching_sweep.py [--model PATH] [--prompts 4] [--repeats 3] [--adaptive] [--json out/benchmarks/patching_sweep.json]

By default adaptive stopping is off, so every run takes all ``max_denoising_steps`` (16 for the
bundled model; 48 for the released one); ``--adaptive`` keeps the checkpoint's stopping rule.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

import diffinterp as di
from diffinterp.core.loading import bundled_model_path, resolve_model_path
from diffinterp.instruments import patching as pt


def hop_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` held-out ``hop`` prompts and corrupted twins whose answer-bearing value is another digit."""
    from diffinterp.organisms.catalog import task as catalog_task

    rng = random.Random(seed)
    clean, corrupt = [], []
    for example in catalog_task("hop").test_set(n):
        tokens = example.prompt.split()
        value = example.answer
        others = {s.split("=")[1] for s in tokens if "=" in s and s.split("=")[1].isdigit()}
        choices = [str(d) for d in range(10) if str(d) not in others]
        new = rng.choice(choices)
        corrupt_tokens = [f"{s.split('=')[0]}={new}" if "=" in s and s.split("=")[1] == value else s for s in tokens]
        clean.append(example.prompt)
        corrupt.append(" ".join(corrupt_tokens))
    return clean, corrupt


def prompt_ids(clean: list[str], corrupt: list[str]):
    """Both prompt lists as ``<bos> prompt`` ids padded to one length (the toy models' format)."""
    from diffinterp.organisms.batches import prompt_batch

    ids, mask = prompt_batch(clean + corrupt)
    n = len(clean)
    return ids[:n], ids[n:], mask[:n], mask[n:]


def full_schedule(hm) -> dict:
    """Settings that switch adaptive stopping off: every run takes all ``max_denoising_steps`` steps.

    (Stopping needs the argmax canvas unchanged for ``stability_threshold`` steps; with the
    threshold at the step count it can never trigger.)
    """
    return {"stability_threshold": hm.model.generation_config.max_denoising_steps}


def setup(
    hm, n_prompts: int, names="decoder.blocks.*.hook_resid_post", seed: int = 0, differ: bool = False, **gen_kwargs
):
    """Coupled clean/corrupted hop runs and the logit-difference metric of their answers.

    ``differ``: keep only pairs whose answers differ (drawn from 4x as many candidates, run once to
    select them; the selected pairs are then run again as one batch).
    """
    clean_p, corrupt_p = hop_pairs(4 * n_prompts if differ else n_prompts, seed)
    if differ:
        ids, ids2, mask, mask2 = prompt_ids(clean_p, corrupt_p)
        clean, _, corrupt, _ = pt.coupled_runs(
            hm, ids, ids2, [], attention_mask=mask, corrupt_attention_mask=mask2, seed=seed, **gen_kwargs
        )
        keep = (pt.final_outputs(hm, clean)[1][:, 0] != pt.final_outputs(hm, corrupt)[1][:, 0]).nonzero()
        keep = keep.flatten()[:n_prompts].tolist()
        clean_p, corrupt_p = [clean_p[i] for i in keep], [corrupt_p[i] for i in keep]
    ids, ids2, mask, mask2 = prompt_ids(clean_p, corrupt_p)
    clean, cache, corrupt, corrupt_cache = pt.coupled_runs(
        hm, ids, ids2, names, attention_mask=mask, corrupt_attention_mask=mask2, seed=seed, **gen_kwargs
    )
    _, argmax_c = pt.final_outputs(hm, clean)
    _, argmax_k = pt.final_outputs(hm, corrupt)
    answer = torch.zeros_like(argmax_c, dtype=torch.bool)
    answer[:, 0] = True  # the hop answer is one digit, the canvas's first token
    metric = pt.LogitDiff(argmax_c, argmax_k, positions=answer)
    return clean, cache, corrupt, corrupt_cache, metric, (clean_p, corrupt_p)


def checkpoint_id(path=None) -> str:
    """First 12 hex digits of the SHA-256 of the checkpoint's weights (which model the numbers are for)."""
    import hashlib

    folder = resolve_model_path(path)  # a bundled name ("toy4") or a folder
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"no *.safetensors in {folder}: not a checkpoint folder")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="toy4", help="a model speaking toy4's tasks (default toy4: its prompts are hop pairs)"
    )
    parser.add_argument("--prompts", type=int, default=4, help="prompt pairs patched together (batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="patched runs per forward pass")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--adaptive", action="store_true", help="keep the model's adaptive stopping (default: all steps run)"
    )
    parser.add_argument("--json", default="out/benchmarks/patching_sweep.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hm = di.load_model(args.model)
    # --adaptive keeps each run's own stopping (align_steps=False) and sweeps the steps both took
    settings = {"align_steps": False} if args.adaptive else full_schedule(hm)
    clean, cache, corrupt, _, metric, _ = setup(hm, args.prompts, **settings)
    n_steps = min(clean.block(0).n_steps, corrupt.block(0).n_steps)
    n_layers = hm.text_config.num_hidden_layers

    times: dict[str, list[float]] = {"loop": [], "batched": []}
    results = {}
    for _ in range(args.repeats):
        for name, batched in (("loop", False), ("batched", True)):
            start = time.perf_counter()
            results[name] = pt.step_layer_sweep(
                hm, clean, corrupt, cache, metric, steps=range(n_steps), batched=batched, batch_size=args.batch_size
            )
            times[name].append(time.perf_counter() - start)
    loop, batched = statistics.median(times["loop"]), statistics.median(times["batched"])
    max_diff = float((results["loop"].values - results["batched"].values).abs().max())
    report = {
        "model": str(args.model or bundled_model_path()),
        "weights_sha256": checkpoint_id(args.model),
        "device": str(hm.model.device),
        "threads": args.threads,
        "prompts": args.prompts,
        "steps": n_steps,
        "adaptive_stopping": args.adaptive,
        "layers": n_layers,
        "patched_runs": n_steps * n_layers,
        "loop_s": times["loop"],
        "batched_s": times["batched"],
        "median_loop_s": loop,
        "median_batched_s": batched,
        "speedup": loop / batched,
        "max_abs_difference": max_diff,
        "command": "python " + " ".join(sys.argv),
    }
    print(f"step x layer sweep, {n_steps} steps x {n_layers} layers x {args.prompts} prompts ({report['model']})")
    print(f"  loop of run_with_hooks : {loop:7.2f} s (median of {args.repeats})")
    print(f"  batched sweep          : {batched:7.2f} s")
    print(f"  speedup                : {loop / batched:7.1f}x   (max |difference| {max_diff:.2e})")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
