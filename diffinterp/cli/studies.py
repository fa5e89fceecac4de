"""``diffinterp case-study NAME``: run any registered case study (built-in or from another package)."""

from __future__ import annotations

from diffinterp.cli.options import add_quantize_arg, add_sampler_args, sampler_kwargs


def register(commands) -> None:
    from diffinterp.studies.registry import available_studies

    entries = available_studies()
    listing = "\n".join(
        f"  {name:<24} {entry.target}"
        + (f" ({entry.distribution})" if entry.distribution not in (None, "diffinterp") else "")
        for name, entry in entries.items()
    )
    study = commands.add_parser(
        "case-study",
        help="run a case study; metrics.json and figures in out/NAME/",
        description="Run a registered case study (entry-point group diffinterp.case_studies) and write its "
        "metrics.json and figures.",
        epilog=f"registered case studies:\n{listing}",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    study.add_argument("name", choices=list(entries), metavar="NAME", help="a registered case study (listed below)")
    study.add_argument(
        "--model", default=None, help="a bundled organism or a DiffusionGemma folder (default: the study's organisms)"
    )
    study.add_argument(
        "--n",
        "--examples",
        type=int,
        default=100,
        help="examples per task (--examples: the spelling torchrun passes on)",
    )
    study.add_argument("--out", default=None, help="output folder (default: out/NAME)")
    study.add_argument("--seed", type=int, default=0, help="seed of the prompts and the sampler (default 0)")
    study.add_argument("--quick", action="store_true", help="the short version `diffinterp demo` runs")
    study.add_argument(
        "--tasks", default=None, help="comma-separated tasks, e.g. arith,hop (studies that take several)"
    )
    add_sampler_args(study, bottleneck_default=None)
    add_quantize_arg(study)
    study.set_defaults(func=cmd_case_study)


def study_options(run, args) -> dict:
    """Keyword arguments for a study's ``run`` from the optional CLI flags it accepts (``--tasks``,
    generation arguments); a flag the study cannot take is an error that names it."""
    import inspect

    parameters = inspect.signature(run).parameters
    takes_gen = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    options = {}
    if args.tasks is not None:
        if "tasks" not in parameters:
            raise ValueError(f"case study '{args.name}' has a fixed task; drop --tasks")
        options["tasks"] = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
        if not options["tasks"]:
            raise ValueError(f"--tasks names no task ({args.tasks!r}): give task names, comma-separated")
        from diffinterp.organisms.catalog import TASKS

        unknown = [t for t in options["tasks"] if t not in TASKS and t != "random"]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r} in --tasks; tasks: {', '.join(TASKS)}, random")
    generation = sampler_kwargs(args)
    if generation and not takes_gen:
        flags = ", ".join(sorted(f"--{k.replace('_', '-')}" for k in generation))
        raise ValueError(f"case study '{args.name}' sets its own generation arguments; drop {flags}")
    options.update(generation)
    return options


def cmd_case_study(args) -> int:
    """Run a case study and write its metrics and figures."""
    import json
    import tempfile
    from pathlib import Path

    import torch

    from diffinterp.core.distributed import process_group
    from diffinterp.core.loading import load_model
    from diffinterp.studies.registry import load_study

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.quantize is not None and args.model is None:
        raise ValueError(
            "--quantize loads the model given by --model; add --model NAME (a study's own organisms load in full precision)"
        )
    study = load_study(args.name)
    options = study_options(study.run, args)
    out = args.out or f"out/{args.name.replace('-', '_')}"
    with process_group() as (rank, size):  # torchrun: the prompt batches are split over the processes
        torch.manual_seed(args.seed)
        # None: the study's own organism(s)
        model = load_model(args.model, quantize=args.quantize) if args.model is not None else None
        with tempfile.TemporaryDirectory(prefix="diffinterp-rank-") as scratch:
            # every process computes the whole study from the gathered batches; only rank 0 keeps what it writes
            folder = out if rank == 0 else str(Path(scratch) / "out")
            metrics = study.run(model, n=args.n, out_dir=folder, seed=args.seed, quick=args.quick, **options)
    if rank != 0:
        return 0
    summary = metrics.get("summary", {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
    print(json.dumps(summary, indent=2, default=str))
    where = f" (prompt batches split over {size} processes)" if size > 1 else ""
    print(f"wrote {out}/metrics.json and figures{where}")
    return 0
