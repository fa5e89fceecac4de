"""``diffinterp train`` and ``diffinterp eval``: the toy models' training and evaluation commands.

    diffinterp train --model diffusion --out DIR [--seed S] [--steps N] [--size cpu|gpu]
    diffinterp train --model ar --out DIR
    diffinterp eval --task all                          # bundled DiffusionGemma, held-out splits
    diffinterp eval --task arith --model ar --json      # bundled AR twin
    diffinterp eval --task hop --model PATH --bottleneck argmax

``register(subparsers)`` adds both subcommands to an argparse ``subparsers`` object; each sets
``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

#: Steps of the shipped recipes (CPU) and of the longer GPU runs.
DEFAULT_STEPS = {("diffusion", "cpu"): 11000, ("ar", "cpu"): 3500, ("diffusion", "gpu"): 40000, ("ar", "gpu"): 20000}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a toy checkpoint (DiffusionGemma or its AR Gemma 4 twin) on the toy tasks",
        description="Train the toy DiffusionGemma (--model diffusion) or its autoregressive Gemma 4 twin "
        "(--model ar) on the four toy tasks and save an HF folder with weights, tokenizer, generation "
        "config, loss curve and training log.",
    )
    p.add_argument("--model", choices=("diffusion", "ar"), required=True)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shipped recipe's)")
    p.add_argument(
        "--size",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="model config: cpu (the shipped recipe) or gpu (bigger); auto picks gpu when CUDA is available",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--eval-every", type=int, default=1000, help="held-out eval period in steps")
    p.add_argument("--max-minutes", type=float, default=58.0, help="stop (and save) after this wall time")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many steps, keeping the LR schedule of --steps (replays a time-capped run)",
    )
    p.add_argument("--init-from", default=None, help="warm-start from a saved folder (a further training stage)")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval",
        help="exact-match accuracy of a toy checkpoint on the held-out task splits",
        description="Exact-match accuracy (95%% Wilson interval) and mean denoising steps per canvas on the "
        "held-out split of a toy task.",
    )
    e.add_argument("--task", required=True, help="arith, seq, hop, mon, or all")
    e.add_argument(
        "--model", default=None, help="checkpoint folder, 'ar' (bundled AR twin) or 'diffusion' (bundled, the default)"
    )
    e.add_argument(
        "--bottleneck",
        default=None,
        help="self-conditioning bottleneck for the diffusion sampler: continuous, argmax, topk:K, sample, none",
    )
    e.add_argument("--n", type=int, default=None, help="examples per task (default: the whole held-out set, 400)")
    e.add_argument("--batch-size", type=int, default=200)
    e.add_argument("--seed", type=int, default=0, help="sampler seed")
    e.add_argument("--max-denoising-steps", type=int, default=None, help="override the checkpoint's setting")
    e.add_argument("--json", action="store_true", help="print one JSON object per task")
    e.add_argument(
        "--by-case",
        action="store_true",
        help="also print accuracy per sub-case (tasks.case_of: arith chain length, hop count and which value comes "
        "first, seq operation and length, mon rule)",
    )
    e.add_argument(
        "--save",
        dest="results_file",  # not "save": nnsight mounts a .save() on every object, which argparse would keep
        default=None,
        metavar="FILE",
        help="also write the results as one JSON file (the eval_results.json shipped beside each checkpoint)",
    )
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from diffinterp.organisms.train import TrainConfig, train

    size = args.size
    if size == "auto":
        size = "gpu" if torch.cuda.is_available() else "cpu"
    device = "cuda" if size == "gpu" and torch.cuda.is_available() else "cpu"
    cfg = TrainConfig(
        model=args.model,
        size=size,
        seed=args.seed,
        steps=args.steps or DEFAULT_STEPS[(args.model, size)],
        threads=args.threads,
        eval_every=args.eval_every,
        max_minutes=args.max_minutes,
        device=device,
        init_from=args.init_from,
        stop_after=args.stop_after,
    )
    if args.batch_size:
        cfg.batch_size = args.batch_size
    if args.lr:
        cfg.lr = args.lr
    t0 = time.time()
    out = train(cfg, args.out)
    print(f"saved {args.model} checkpoint to {out} ({(time.time() - t0) / 60:.1f} min)")
    return 0


def _resolve_model(spec: str | None):
    """(model, kind, path) for --model: None/'diffusion' -> bundled DiffusionGemma, 'ar' -> bundled twin."""
    from diffinterp.organisms.twin import bundled_ar_path, bundled_diffusion_path, load_ar_baseline

    if spec in (None, "diffusion"):
        path = bundled_diffusion_path()
    elif spec == "ar":
        path = bundled_ar_path()
    else:
        path = Path(spec)
    kind = "diffusion"
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            if json.loads(config_file.read_text()).get("model_type") == "gemma4_text":
                kind = "ar"
        except json.JSONDecodeError:
            pass  # the loader reports the corrupted folder
    if kind == "ar":
        return load_ar_baseline(path).model, "ar", path
    from diffinterp.core.loading import load_model

    return load_model(path), "diffusion", path


def run_eval(args: argparse.Namespace) -> int:
    from diffinterp.organisms import tasks as T
    from diffinterp.organisms.evaluate import evaluate_task

    if args.task != "all" and args.task not in T.TASKS:
        print(f"unknown task {args.task!r}; choose one of {', '.join(T.TASKS)} or all", file=sys.stderr)
        return 2
    try:
        model, kind, path = _resolve_model(args.model)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if kind == "ar" and args.bottleneck not in (None, "continuous"):
        print("error: --bottleneck applies to the diffusion model only", file=sys.stderr)
        return 2
    gen = {}
    if args.max_denoising_steps and kind == "diffusion":
        gen["max_denoising_steps"] = args.max_denoising_steps
    tasks = T.TASKS if args.task == "all" else (args.task,)
    results = {}
    for task in tasks:
        t0 = time.time()
        res = evaluate_task(
            model,
            task,
            n=args.n,
            model_kind=kind,
            batch_size=args.batch_size,
            bottleneck=args.bottleneck,
            seed=args.seed,
            **gen,
        )
        res["model"] = str(path)
        res["seconds"] = round(time.time() - t0, 2)
        results[task] = res
        if args.json:
            print(json.dumps({k: v for k, v in res.items() if k != "failures"}), flush=True)
        else:
            steps = res["mean_steps_per_canvas"]
            unit = "tokens per answer" if kind == "ar" else "denoising steps per canvas"
            print(
                f"{task:6s} exact match {res['accuracy']:.3f}  95% CI [{res['ci_low']:.3f}, {res['ci_high']:.3f}]  "
                f"n={res['n']}  mean {unit} {steps:.2f}",
                flush=True,
            )
            if args.by_case:
                for case, tally in res["by_case"].items():
                    print(f"       {case:26s} {tally['correct']:4d}/{tally['n']:<4d}", flush=True)
    if args.results_file:
        _save_results(args, results)
    return 0


def _save_results(args: argparse.Namespace, results: dict) -> None:
    """Write ``results`` in the eval_results.json layout (the command, the split, per-task figures)."""
    from diffinterp.organisms.tasks import DEFAULT_TEST_SIZE as T_DEFAULT
    from diffinterp.studies.output import write_json_atomic

    keep = ("accuracy", "ci_low", "ci_high", "n", "correct", "mean_steps_per_canvas", "bottleneck", "by_case")
    command = ["diffinterp eval --task", args.task]
    if args.model:
        command += ["--model", args.model]
    if args.bottleneck:
        command += ["--bottleneck", args.bottleneck]
    if args.n:
        command += ["--n", str(args.n)]
    data = {
        "command": " ".join(command),
        "split": f"held-out test split, first {args.n or T_DEFAULT} examples per task (diffinterp.organisms.tasks.test_set)",
        "seed": args.seed,
        "tasks": {task: {k: res[k] for k in keep} for task, res in results.items()},
    }
    write_json_atomic(args.results_file, data)
