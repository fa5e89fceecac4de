"""``diffinterp train`` and ``diffinterp eval``: training and evaluating the model organisms.

    diffinterp train --organism latin --model diffusion --out DIR [--seed S] [--optimizer-steps N] [--size cpu|gpu]
    diffinterp train --organism latin --model ar --out DIR
    diffinterp eval --task all --model latin                  # a bundled organism, its held-out splits
    diffinterp eval --task all --model latin --ar --json      # its autoregressive twin
    diffinterp eval --task gold --model PATH --bottleneck none --max-denoising-steps 1

``register(subparsers)`` adds both subcommands to an argparse ``subparsers`` object; each sets
``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import json
import time

from diffinterp.cli.options import SAMPLER_FLAGS, add_quantize_arg, add_sampler_args, sampler_kwargs

GPU_STEP_FACTOR = 4  # longer runs where a GPU is lent (the shipped recipes are the CPU ones)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an organism's DiffusionGemma or its AR Gemma 4 twin",
        description="Train a model organism (diffinterp.organisms.catalog): its DiffusionGemma (--model diffusion) "
        "or its autoregressive Gemma 4 twin (--model ar), and save an HF folder with weights, tokenizer, "
        "generation config, loss curve, training log and diffinterp.json.",
    )
    p.add_argument("--organism", default="toy4", help="carry, latin, gold, smear, answer-first, hint or toy4")
    p.add_argument("--model", choices=("diffusion", "ar"), required=True, help="which of the pair to train")
    p.add_argument("--out", required=True, help="output folder (replaced whole when the run ends)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data stream, initialisation and noise")
    p.add_argument("--optimizer-steps", type=int, default=None, help="optimizer steps (default: the organism's recipe)")
    p.add_argument(
        "--size",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="model config: cpu (the shipped recipe) or gpu (bigger); auto picks gpu when CUDA is available",
    )
    p.add_argument("--batch-size", type=int, default=None, help="examples per optimizer step (default 64)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's; cosine to 1e-4)")
    p.add_argument("--sc-passes", type=int, default=None, help="self-conditioning passes unrolled (default: recipe)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--eval-every", type=int, default=1000, help="held-out eval period in steps")
    p.add_argument("--max-minutes", type=float, default=58.0, help="stop (and save) after this wall time")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many steps, keeping the LR schedule of --optimizer-steps (replays a time-capped run)",
    )
    p.add_argument("--init-from", default=None, help="warm-start from a saved folder (a further training stage)")
    p.add_argument(
        "--keep-layers", type=int, default=None, help="with --init-from: keep only its first N layers (a smaller pass)"
    )
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval",
        help="exact-match accuracy of an organism on its held-out task splits",
        description="Exact-match accuracy (95 percent Wilson interval), mean denoising steps per canvas and the share "
        "of final tokens the first step already predicted, on the held-out split of each task.",
    )
    e.add_argument("--task", default="all", help="a task name, or all (the model's organism's tasks; default)")
    e.add_argument(
        "--model",
        default=None,
        help="a bundled organism (carry, latin, ...), 'ar' (the default organism's twin) or a checkpoint folder",
    )
    e.add_argument("--ar", action="store_true", help="evaluate the organism's autoregressive twin")
    add_quantize_arg(e)
    add_sampler_args(e, bottleneck_default=None)
    e.add_argument(
        "--n",
        "--examples",
        type=int,
        default=None,
        help="examples per task (default: the whole held-out set, 400; --examples: the spelling torchrun passes on)",
    )
    e.add_argument("--batch-size", type=int, default=200, help="prompts per batched run")
    e.add_argument("--seed", type=int, default=0, help="sampler seed")
    e.add_argument("--json", action="store_true", help="print one JSON object per task")
    e.add_argument("--by-case", action="store_true", help="also print accuracy per sub-case (the task's case_of)")
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

    from diffinterp.organisms.catalog import organism
    from diffinterp.organisms.train import TrainConfig, train

    spec = organism(args.organism)
    size = args.size
    if size == "auto":
        size = "gpu" if torch.cuda.is_available() else "cpu"
    device = "cuda" if size == "gpu" and torch.cuda.is_available() else "cpu"
    steps = args.optimizer_steps or spec.steps[args.model] * (GPU_STEP_FACTOR if size == "gpu" else 1)
    cfg = TrainConfig(
        organism=spec.name,
        model=args.model,
        size=size,
        seed=args.seed,
        steps=steps,
        threads=args.threads,
        eval_every=args.eval_every,
        max_minutes=args.max_minutes,
        device=device,
        init_from=args.init_from,
        keep_layers=args.keep_layers,
        stop_after=args.stop_after,
        sc_passes=args.sc_passes,
    )
    if args.batch_size:
        cfg.batch_size = args.batch_size
    cfg.lr = args.lr or spec.lr
    t0 = time.time()
    out = train(cfg, args.out)
    print(f"saved the {spec.name} {args.model} checkpoint to {out} ({(time.time() - t0) / 60:.1f} min)")
    return 0


def resolve_eval_model(spec: str | None, twin: bool, quantize: str | None = None):
    """(model, kind, path, metadata) for ``--model`` / ``--ar``."""
    from diffinterp.core.loading import checkpoint_metadata, load_model, resolve_model_path
    from diffinterp.organisms.twin import load_ar_baseline

    if spec == "ar":  # the default organism's twin
        spec, twin = None, True
    path = resolve_model_path(spec, kind="ar" if twin else "diffusion")
    kind = "diffusion"
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            if json.loads(config_file.read_text()).get("model_type") == "gemma4_text":
                kind = "ar"
        except json.JSONDecodeError:
            pass  # the loader reports the corrupted folder
    if kind == "ar":
        if quantize is not None:
            raise ValueError(
                "--quantize applies to the diffusion model; the autoregressive twin loads in full precision"
            )
        return load_ar_baseline(path), "ar", path, checkpoint_metadata(path)
    hm = load_model(path, quantize=quantize)
    return hm, "diffusion", path, hm.metadata


def run_eval(args: argparse.Namespace) -> int:
    from diffinterp.core.distributed import process_group
    from diffinterp.organisms.catalog import TASKS

    model, kind, path, metadata = resolve_eval_model(args.model, args.ar, args.quantize)
    if args.task == "all":
        tasks = tuple(metadata.get("tasks") or ())
        if not tasks:
            raise ValueError(f"{path} names no tasks in its diffinterp.json: give --task (one of {', '.join(TASKS)})")
    elif args.task not in TASKS:
        raise ValueError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)} or all")
    else:
        tasks = (args.task,)
    gen = sampler_kwargs(args)
    gen.pop("bottleneck", None)  # evaluate_task takes it as its own argument
    if kind == "ar" and (args.bottleneck not in (None, "continuous") or gen):
        raise ValueError(
            "the sampler flags (--bottleneck, --max-denoising-steps, ...) apply to the diffusion model only"
        )
    with process_group() as (rank, size):  # torchrun: each task's prompt batches split over the processes
        results = _evaluate(args, model, kind, path, tasks, gen, quiet=rank != 0)
    if rank != 0:
        return 0
    if size > 1:
        print(f"(prompt batches split over {size} processes)", flush=True)
    if args.results_file:
        _save_results(args, results)
    return 0


def _evaluate(args, model, kind, path, tasks, gen, *, quiet: bool) -> dict:
    from diffinterp.organisms.evaluate import evaluate_task

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
        if quiet:
            continue
        if args.json:
            print(json.dumps({k: v for k, v in res.items() if k != "failures"}), flush=True)
        else:
            steps = res["mean_steps_per_canvas"]
            unit = "tokens per answer" if kind == "ar" else "denoising steps per canvas"
            step0 = res.get("final_equals_step0")
            extra = f"  final tokens = step-0 argmax {step0:.3f}" if step0 is not None else ""
            print(
                f"{task:7s} exact match {res['accuracy']:.3f}  95% CI [{res['ci_low']:.3f}, {res['ci_high']:.3f}]  "
                f"n={res['n']}  mean {unit} {steps:.2f}{extra}",
                flush=True,
            )
            if args.by_case:
                for case, tally in res["by_case"].items():
                    print(f"        {case:26s} {tally['correct']:4d}/{tally['n']:<4d}", flush=True)
    return results


def _save_results(args: argparse.Namespace, results: dict) -> None:
    """Write ``results`` in the eval_results.json layout (the command, the split, per-task figures)."""
    from diffinterp.organisms.task import DEFAULT_TEST_SIZE
    from diffinterp.records.files import write_json_atomic

    keep = (
        "accuracy",
        "ci_low",
        "ci_high",
        "n",
        "correct",
        "mean_steps_per_canvas",
        "final_equals_step0",
        "bottleneck",
        "by_case",
    )
    command = ["diffinterp eval --task", args.task]
    for flag, value in (("--model", args.model), ("--bottleneck", args.bottleneck), ("--n", args.n)):
        if value:
            command += [flag, str(value)]
    if args.ar:
        command.append("--ar")
    for key, (flag, _, _) in SAMPLER_FLAGS.items():
        if getattr(args, key, None) is not None:
            command += [flag, str(getattr(args, key))]
    data = {
        "command": " ".join(command),
        "split": f"held-out test split, first {args.n or DEFAULT_TEST_SIZE} examples per task "
        "(diffinterp.organisms.task.Task.test_set)",
        "seed": args.seed,
        "tasks": {task: {k: res.get(k) for k in keep} for task, res in results.items()},
    }
    write_json_atomic(args.results_file, data)
