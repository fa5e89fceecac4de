"""``diffinterp demo`` and ``diffinterp run``: generate on a checkpoint, print and save what happened."""

from __future__ import annotations

from pathlib import Path

from diffinterp.cli.options import (
    add_generation_args,
    decode_text,
    default_prompt,
    distinct_outputs,
    generation_kwargs,
    prompt_ids,
)


def register(commands) -> None:
    demo = commands.add_parser("demo", help="generate on the bundled model; print steps; write figures to out/")
    add_generation_args(demo)
    demo.add_argument("--prompt", default=None, help="prompt text (default: the model's demo prompt)")
    demo.add_argument("--out", default="out/demo", help="output folder, replaced whole (default out/demo)")
    demo.add_argument("--no-studies", action="store_true", help="skip the quick case studies and the report")
    demo.set_defaults(func=cmd_demo)

    run = commands.add_parser("run", help="generate and save a cache of hook activations")
    add_generation_args(run)
    run.add_argument("--prompt", required=True, help="prompt text")
    run.add_argument(
        "--cache", required=True, help="comma-separated hook names or globs, e.g. 'decoder.blocks.*.hook_resid_post'"
    )
    run.add_argument("--cache-steps", default=None, help="comma-separated steps to record (default: all)")
    run.add_argument(
        "--max-bytes", type=int, default=None, help="refuse a cache larger than this (default: 80%% of free memory)"
    )
    run.add_argument("--record-logits", action="store_true", help="keep every step's logits in the trajectory")
    run.add_argument("--out", required=True, help="cache file (.safetensors)")
    run.add_argument("--trajectory", default=None, help="trajectory file (default: beside --out)")
    run.set_defaults(func=cmd_run)


def cmd_demo(args) -> int:
    """Generate on the bundled (or given) model, print each step's argmax canvas, write figures."""
    import torch

    from diffinterp.core.loading import load_model
    from diffinterp.figures.canvas import canvas_evolution, entropy_heatmap
    from diffinterp.records.files import atomic_folder, save_figure

    hm = load_model(args.model, quantize=args.quantize)
    input_ids, attention_mask = prompt_ids(hm, args.prompt, args.model)
    torch.manual_seed(args.seed)
    trajectory = hm.generate(input_ids, attention_mask=attention_mask, progress=True, **generation_kwargs(args))
    print(f"prompt: {args.prompt if args.prompt is not None else default_prompt(hm, args.model)}")
    for record in trajectory.blocks:
        print(f"block {record.block} ({record.n_steps} steps)")
        for step in record.steps:
            print(f"  step {step.step:3d}  T={step.temperature:.3f}  {decode_text(hm, step.argmax[0])}")
    print(f"output: {decode_text(hm, trajectory.new_tokens()[0])}")
    out = Path(args.out)
    with atomic_folder(out) as folder:  # the whole folder appears at the end: nothing of an earlier run stays
        written = []
        for record in trajectory.blocks:
            name = f"block{record.block}"
            fig = canvas_evolution(trajectory, record.block, 0, hm.tokenizer)
            written += save_figure(fig, folder / f"canvas_evolution_{name}")
            written += save_figure(entropy_heatmap(trajectory, record.block, 0), folder / f"entropy_heatmap_{name}")
        trajectory.save(folder / "trajectory.safetensors")
        written.append(folder / "trajectory.safetensors")
        if not args.no_studies:
            written.append(run_demo_studies(None if args.model is None else hm, folder, seed=args.seed))
    print("wrote " + ", ".join(str(out / p.relative_to(folder)) for p in written))
    return 0


DEMO_STUDIES = ("non-chronological", "smearing", "intermediate-context", "monitorability")


def run_demo_studies(hm, out: Path, *, seed: int = 0) -> Path:
    """The quick version of each algorithmic-transparency study into ``out/NAME``; a one-page report.

    ``hm`` ``None``: each study runs on its own organism(s); a model: every study runs on it.
    """
    import time

    import torch

    from diffinterp.studies.registry import load_study
    from diffinterp.studies.report import StudyResult, write_report

    results = []
    for name in DEMO_STUDIES:
        study = load_study(name)
        folder = out / name.replace("-", "_")
        print(f"case study {name} (quick) ...", flush=True)
        start = time.perf_counter()
        torch.manual_seed(seed)
        metrics = study.run(hm, out_dir=folder, seed=seed, quick=True)
        seconds = time.perf_counter() - start
        results.append(StudyResult(name, folder, metrics, seconds, study.description))
        print(f"  done in {seconds:.0f} s -> {folder}/metrics.json", flush=True)
    preamble = (
        "Quick versions (small samples) of the case studies on the model the demo ran; `diffinterp case-study "
        "NAME --n 100` runs the full ones. Produced by `diffinterp demo`.\n\n"
        "The demo's own trajectory (one prompt, every step):\n\n"
        "![canvas evolution](canvas_evolution_block0.png)\n![entropy heatmap](entropy_heatmap_block0.png)"
    )
    return write_report(out / "report.md", results, title="diffinterp demo: case studies", preamble=preamble)


def cmd_run(args) -> int:
    """Generate and save a cache of the named hooks (and the trajectory)."""
    import torch

    from diffinterp.core.loading import load_model

    trajectory_path = (
        Path(args.trajectory) if args.trajectory else Path(args.out).with_suffix(".trajectory.safetensors")
    )
    distinct_outputs(Path(args.out), trajectory_path)
    names = [name.strip() for name in args.cache.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--cache names no hook ({args.cache!r}): give hook names or globs, comma-separated")
    steps = None
    if args.cache_steps is not None:
        try:
            steps = [int(s) for s in args.cache_steps.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--cache-steps takes comma-separated step numbers, got {args.cache_steps!r}") from None
    hm = load_model(args.model, quantize=args.quantize)
    input_ids, attention_mask = prompt_ids(hm, args.prompt)
    torch.manual_seed(args.seed)
    trajectory, cache = hm.run_with_cache(
        input_ids,
        names_filter=names,
        steps=steps,
        attention_mask=attention_mask,
        max_bytes=args.max_bytes if args.max_bytes is not None else "auto",
        record_logits=args.record_logits,
        progress=True,
        **generation_kwargs(args),
    )
    cache.save(args.out)
    trajectory.save(trajectory_path)
    print(f"output: {decode_text(hm, trajectory.new_tokens()[0])}")
    print(f"{cache} -> {args.out}; trajectory -> {trajectory_path}")
    return 0
