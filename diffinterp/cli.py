"""The ``diffinterp`` command.

diffinterp demo [--model PATH] [--prompt TEXT] [--out DIR]
diffinterp hooks [--config real|tiny|PATH] [--batch B] [--prompt-len T] [--block K]
diffinterp run --prompt TEXT --cache NAMES --out FILE [--model PATH] [--trajectory FILE]
diffinterp lens [--prompt TEXT] [--positions 0-7] [--out DIR]
diffinterp patch --clean TEXT --corrupt TEXT [--sweep step-layer|step-position|path] [--metric logit-diff|prob|exact]
diffinterp depth [--config real|tiny|PATH] [--steps N ...]
diffinterp case-study NAME [--n N] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="HF DiffusionGemma folder (default: the bundled checkpoint)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (default: checkpoint's)")
    parser.add_argument("--steps", type=int, default=None, help="max denoising steps per canvas")
    parser.add_argument("--bottleneck", default="continuous", help="continuous | argmax | topk:K | sample | none")
    parser.add_argument("--seed", type=int, default=0)


def _generation_kwargs(args) -> dict:
    kwargs = {"bottleneck": args.bottleneck}
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.steps is not None:
        kwargs["max_denoising_steps"] = args.steps
    return kwargs


def _prompt_ids(hm, prompt: str | None, path=None):
    if hm.tokenizer is None:
        raise SystemExit("this checkpoint has no tokenizer; give a folder with tokenizer files")
    return hm.to_tokens(prompt if prompt is not None else default_prompt(hm, path))


def default_prompt(hm, path=None) -> str:
    """A prompt the checkpoint knows (from its ``diffinterp.json``)."""
    from diffinterp.model import checkpoint_metadata

    return checkpoint_metadata(path).get("demo_prompt", "a=3 b=a+4 c=b*2 ? c")


def _decode(hm, tokens) -> str:
    from diffinterp.plotting import token_labels

    return " ".join(token_labels(tokens, hm.tokenizer))


# ------------------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    """Generate on the bundled (or given) model, print each step's argmax canvas, write figures."""
    from diffinterp.model import load_model
    from diffinterp.plotting import canvas_evolution, entropy_heatmap, save_figure

    hm = load_model(args.model)
    input_ids, attention_mask = _prompt_ids(hm, args.prompt, args.model)
    torch.manual_seed(args.seed)
    trajectory = hm.generate(input_ids, attention_mask=attention_mask, progress=True, **_generation_kwargs(args))
    print(f"prompt: {args.prompt or default_prompt(hm, args.model)}")
    for record in trajectory.blocks:
        print(f"block {record.block} ({record.n_steps} steps)")
        for step in record.steps:
            print(f"  step {step.step:3d}  T={step.temperature:.3f}  {_decode(hm, step.argmax[0])}")
    print(f"output: {_decode(hm, trajectory.new_tokens()[0])}")
    out = Path(args.out)
    written = []
    for record in trajectory.blocks:
        written += save_figure(
            canvas_evolution(trajectory, record.block, 0, hm.tokenizer), out / f"canvas_evolution_block{record.block}"
        )
        written += save_figure(
            entropy_heatmap(trajectory, record.block, 0), out / f"entropy_heatmap_block{record.block}"
        )
    trajectory.save(out / "trajectory.safetensors")
    print("wrote " + ", ".join(str(p) for p in written + [out / "trajectory.safetensors"]))
    if not args.no_studies:
        report = run_demo_studies(hm, out, seed=args.seed)
        print(f"report: {report}")
    return 0


DEMO_STUDIES = ("non-chronological", "smearing", "intermediate-context", "monitorability")


def run_demo_studies(hm, out: Path, *, seed: int = 0) -> Path:
    """The quick version of each algorithmic-transparency study into ``out/NAME``; a one-page report."""
    import importlib
    import time

    from case_studies import STUDIES
    from diffinterp.report import StudyResult, write_report

    results = []
    for name in DEMO_STUDIES:
        module = importlib.import_module(STUDIES[name])
        folder = out / name.replace("-", "_")
        print(f"case study {name} (quick) ...", flush=True)
        start = time.perf_counter()
        torch.manual_seed(seed)
        metrics = module.run(hm, out_dir=folder, seed=seed, quick=True)
        seconds = time.perf_counter() - start
        description = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())  # first paragraph
        results.append(StudyResult(name, folder, metrics, seconds, description))
        print(f"  done in {seconds:.0f} s -> {folder}/metrics.json", flush=True)
    preamble = (
        "Quick versions (small samples) of the case studies on the model the demo ran; `diffinterp case-study "
        "NAME --n 100` runs the full ones. Produced by `diffinterp demo`.\n\n"
        "The demo's own trajectory (one prompt, every step):\n\n"
        "![canvas evolution](canvas_evolution_block0.png)\n![entropy heatmap](entropy_heatmap_block0.png)"
    )
    return write_report(out / "report.md", results, title="diffinterp demo: case studies", preamble=preamble)


def cmd_hooks(args) -> int:
    """List every hook point with its shape."""
    from diffinterp.hooks import HookedDiffusionGemma
    from diffinterp.model import load_hf_model, meta_model, real_config, tiny_config

    if args.config == "real":
        model = meta_model(real_config())
    elif args.config == "tiny":
        model = meta_model(tiny_config())
    else:
        model = load_hf_model(args.config if args.config != "bundled" else None)
    hm = HookedDiffusionGemma(model)
    print(
        f"# {len(hm.hook_names)} hook points; shapes for batch={args.batch}, prompt_len={args.prompt_len}, "
        f"block={args.block}, canvas_length={hm.config.canvas_length}"
    )
    width = max(len(name) for name in hm.hook_names)
    for name in hm.hook_names:
        shape = hm.hook_shape(name, batch=args.batch, prompt_len=args.prompt_len, block=args.block)
        print(f"{name:<{width}}  {list(shape)}")
    return 0


def cmd_run(args) -> int:
    """Generate and save a cache of the named hooks (and the trajectory)."""
    from diffinterp.model import load_model

    hm = load_model(args.model)
    input_ids, attention_mask = _prompt_ids(hm, args.prompt)
    names = [name.strip() for name in args.cache.split(",") if name.strip()]
    torch.manual_seed(args.seed)
    steps = None if args.cache_steps is None else [int(s) for s in args.cache_steps.split(",")]
    trajectory, cache = hm.run_with_cache(
        input_ids,
        names_filter=names,
        steps=steps,
        attention_mask=attention_mask,
        max_bytes=args.max_bytes,
        progress=True,
        **_generation_kwargs(args),
    )
    cache.save(args.out)
    trajectory_path = (
        Path(args.trajectory) if args.trajectory else Path(args.out).with_suffix(".trajectory.safetensors")
    )
    trajectory.save(trajectory_path)
    print(f"output: {_decode(hm, trajectory.new_tokens()[0])}")
    print(f"{cache} -> {args.out}; trajectory -> {trajectory_path}")
    return 0


def cmd_depth(args) -> int:
    """Print the opaque-serial-depth table (AR Gemma 4 vs DiffusionGemma by signal mode)."""
    import json
    import time

    from case_studies.variable_transparency import depth_table
    from diffinterp.depth_accounting import format_table

    start = time.perf_counter()
    rows, details = depth_table(
        args.config, args.steps, ar_path=args.ar, prompt_len=args.prompt_len, trace_steps=args.trace_steps
    )
    print(format_table(rows))
    print(
        f"\nAR depth per token: {details['ar_depth']}; the continuous chain reaches the paper's 28.6x after "
        f"{details['steps_for_paper_naive_ratio']:.1f} steps; traced steps per mode: {args.trace_steps} "
        f"(longer chains extrapolate the fixed per-step increment); {time.perf_counter() - start:.0f} s"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": [r.__dict__ for r in rows], "details": details}, indent=2))
    return 0


def cmd_lens(args) -> int:
    """Logit lens of one prompt: a step x layer grid per position and the commit order, with numbers."""
    import json

    from diffinterp import instrument_plots as ip
    from diffinterp.lens import first_prediction, settle_steps, target_lens
    from diffinterp.model import load_model
    from diffinterp.plotting import save_figure, token_labels

    hm = load_model(args.model)
    input_ids, attention_mask = _prompt_ids(hm, args.prompt, args.model)
    torch.manual_seed(args.seed)
    trajectory, cache = hm.run_with_cache(
        input_ids, "decoder.blocks.*.hook_resid_post", attention_mask=attention_mask, blocks=[0], progress=True,
        **_generation_kwargs(args),
    )  # fmt: skip
    final = trajectory.block(0).final_canvas
    lens = target_lens(hm, cache, final)  # full-vocabulary argmax, no [steps, layers, pos, vocab] tensor
    first, settle = first_prediction(lens, final), settle_steps(trajectory)
    positions = _positions(args.positions, final.shape[1])
    out = Path(args.out)
    written = save_figure(
        ip.logit_lens_grid(lens, final, positions=positions, tokenizer=hm.tokenizer), out / "logit_lens"
    )
    written += save_figure(ip.commit_order(trajectory, tokenizer=hm.tokenizer, first=first), out / "commit_order")
    tokens = token_labels(final[0].tolist(), hm.tokenizer)
    rows = [
        {"position": p, "token": tokens[p], "settle_step": int(settle[0, p]),
         "lens_first_step": int(first.step[0, p]), "lens_first_layer": int(first.layer[0, p])}
        for p in positions
    ]  # fmt: skip
    print(f"output: {_decode(hm, trajectory.new_tokens()[0])} ({trajectory.block(0).n_steps} steps)")
    print("position  token      settles at step  lens first predicts it at (step, layer)")
    for row in rows:
        print(f"{row['position']:8d}  {row['token']:<9}  {row['settle_step']:15d}  "
              f"({row['lens_first_step']}, {row['lens_first_layer']})")  # fmt: skip
    summary = {"prompt": args.prompt or default_prompt(hm, args.model), "steps": trajectory.block(0).n_steps,
               "layers": lens.layers, "positions": rows}  # fmt: skip
    (out / "lens.json").write_text(json.dumps(summary, indent=2))
    print("wrote " + ", ".join(str(p) for p in written + [out / "lens.json"]))
    return 0


def _positions(spec: str | None, n_pos: int) -> list[int]:
    """``--positions``: comma-separated canvas positions and ranges (``0-3,8``); default the first 8."""
    if spec is None:
        return list(range(min(8, n_pos)))
    positions = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        try:
            positions += list(range(int(low), int(high or low) + 1))
        except ValueError:
            raise ValueError(f"--positions takes numbers and ranges like '0-3,8', got '{spec}'") from None
    bad = [p for p in positions if not 0 <= p < n_pos]
    if bad:
        raise ValueError(f"position {bad[0]} is outside the canvas (positions 0..{n_pos - 1})")
    return positions


PATCH_METRICS = ("logit-diff", "prob", "exact")
PATCH_SWEEPS = ("step-layer", "step-position", "path")


def cmd_patch(args) -> int:
    """Activation or path patching from a clean prompt into a corrupted one, with the same random draws."""
    import json

    from diffinterp import instrument_plots as ip
    from diffinterp import patching as pt
    from diffinterp.model import load_model
    from diffinterp.plotting import save_figure
    from diffinterp.studies import special_ids

    hm = load_model(args.model)
    layer = hm.text_config.num_hidden_layers // 2 if args.layer is None else args.layer
    names = ["decoder.blocks.*.hook_resid_post", "decoder.hook_embed", "decoder.sc.hook_soft_embed"]
    gen = _generation_kwargs(args)
    if not args.adaptive:
        # Adaptive stopping would let a patched run stop at another step than the clean one (or run
        # on past the patch), so by default every run takes all its steps: the stability check can
        # never pass when it needs as many stable steps as there are steps.
        gen["stability_threshold"] = args.steps or hm.model.generation_config.max_denoising_steps or 48
    clean, cache, corrupt, _ = pt.coupled_runs(
        hm, [args.clean], [args.corrupt], names, seed=args.seed, blocks=[0], **gen
    )
    _, clean_out = pt.final_outputs(hm, clean)
    _, corrupt_out = pt.final_outputs(hm, corrupt)
    if torch.equal(clean_out, corrupt_out) and args.metric != "prob":
        raise ValueError(
            "the clean and corrupted prompts give the same output, so there is no difference to restore; "
            "choose a corruption that changes the answer (or --metric prob)"
        )
    eos, pad = special_ids(hm)
    metric = {
        "logit-diff": lambda: pt.LogitDiff(clean_out, corrupt_out),
        "prob": lambda: pt.AnswerProb(clean_out),
        "exact": lambda: pt.ExactMatch(clean_out, eos_id=eos, pad_id=pad),
    }[args.metric]()
    if args.sweep == "step-layer":
        result = pt.step_layer_sweep(hm, clean, corrupt, cache, metric, mode=args.mode)
        fig = ip.patching_heatmap(result)
    elif args.sweep == "step-position":
        hook = f"decoder.blocks.{layer}.hook_resid_post"
        result = pt.step_position_sweep(hm, clean, corrupt, cache, metric, hook=hook, mode=args.mode)
        fig = ip.patching_heatmap(result)
    else:
        mode = "chain" if args.mode == "chain" else "free"
        result = pt.path_patching(hm, clean, corrupt, metric, clean_cache=cache, mode=mode)
        fig = ip.path_patching_plot(result)
    out = Path(args.out)
    written = save_figure(fig, out / f"patching_{args.sweep}")
    restored = result.mean(normalised=True)
    print(f"clean:     {_decode(hm, clean.new_tokens()[0])}")
    print(f"corrupted: {_decode(hm, corrupt.new_tokens()[0])}")
    print(f"{metric.name}: clean {float(result.clean.mean()):.3f}, corrupted {float(result.corrupt.mean()):.3f}")
    best = torch.nan_to_num(restored, nan=-float("inf"))
    index = divmod(int(best.argmax()), restored.shape[1]) if restored.dim() == 2 else (int(best.argmax()),)
    labels = [f"{axis} {values[i]}" for (axis, values), i in zip(result.axes.items(), index, strict=False)]
    print(f"largest restored fraction: {float(best.max()):.3f} at {', '.join(labels)}")
    summary = {
        "clean": args.clean, "corrupt": args.corrupt, "metric": metric.name, "sweep": args.sweep, "mode": args.mode,
        "clean_value": float(result.clean.mean()), "corrupt_value": float(result.corrupt.mean()),
        "axes": {k: list(v) for k, v in result.axes.items()}, "restored_fraction": restored.tolist(),
    }  # fmt: skip
    (out / "patching.json").write_text(json.dumps(summary, indent=2, default=str))
    print("wrote " + ", ".join(str(p) for p in written + [out / "patching.json"]))
    return 0


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
    generation = {"bottleneck": args.bottleneck, "max_denoising_steps": args.steps}
    for key, value in generation.items():
        if value is None:
            continue
        if not takes_gen:
            raise ValueError(f"case study '{args.name}' sets its own generation arguments; drop --{key.split('_')[-1]}")
        options[key] = value
    return options


def cmd_case_study(args) -> int:
    """Run a case study and write its metrics and figures."""
    import importlib
    import json

    from case_studies import STUDIES
    from diffinterp.model import load_model

    module = importlib.import_module(STUDIES[args.name])
    options = study_options(module.run, args)
    out = args.out or f"out/{args.name.replace('-', '_')}"
    torch.manual_seed(args.seed)
    metrics = module.run(load_model(args.model), n=args.n, out_dir=out, seed=args.seed, quick=args.quick, **options)
    summary = metrics.get("summary", {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {out}/metrics.json and figures")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinterp", description="Step-resolved interpretability for DiffusionGemma")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate on the bundled model; print steps; write figures to out/")
    _add_generation_args(demo)
    demo.add_argument("--prompt", default=None)
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--no-studies", action="store_true", help="skip the quick case studies and the report")
    demo.set_defaults(func=cmd_demo)

    hooks = commands.add_parser("hooks", help="list hook names with their shapes")
    hooks.add_argument("--config", default="bundled", help="real (26B-A4B, meta device) | tiny | bundled | PATH")
    hooks.add_argument("--batch", type=int, default=1)
    hooks.add_argument("--prompt-len", type=int, default=16)
    hooks.add_argument("--block", type=int, default=0)
    hooks.set_defaults(func=cmd_hooks)

    run = commands.add_parser("run", help="generate and save a cache of hook activations")
    _add_generation_args(run)
    run.add_argument("--prompt", required=True)
    run.add_argument(
        "--cache", required=True, help="comma-separated hook names or globs, e.g. 'decoder.blocks.*.hook_resid_post'"
    )
    run.add_argument("--cache-steps", default=None, help="comma-separated steps to record (default: all)")
    run.add_argument("--max-bytes", type=int, default=None)
    run.add_argument("--out", required=True, help="cache file (.safetensors)")
    run.add_argument("--trajectory", default=None, help="trajectory file (default: beside --out)")
    run.set_defaults(func=cmd_run)

    depth = commands.add_parser("depth", help="opaque serial depth: AR Gemma 4 vs DiffusionGemma (meta device)")
    depth.add_argument("--config", default="real", help="real (26B-A4B) | tiny | PATH to a DiffusionGemma folder")
    depth.add_argument("--ar", default=None, help="AR twin folder for --config PATH (default: the bundled twin)")
    depth.add_argument("--steps", type=int, nargs="+", default=[48], help="chain lengths N to report")
    depth.add_argument("--prompt-len", type=int, default=16)
    depth.add_argument("--trace-steps", type=int, default=4, help="steps traced per mode (>= N traces every step)")
    depth.add_argument("--json", default=None, help="also write the table as JSON here")
    depth.set_defaults(func=cmd_depth)

    lens = commands.add_parser("lens", help="logit lens of one prompt: step x layer grids, commit order")
    _add_generation_args(lens)
    lens.add_argument("--prompt", default=None, help="default: the checkpoint's demo prompt")
    lens.add_argument("--positions", default=None, help="canvas positions to draw, e.g. '0-3,8' (default 0-7)")
    lens.add_argument("--out", default="out/lens")
    lens.set_defaults(func=cmd_lens)

    patch = commands.add_parser("patch", help="activation / path patching from a clean into a corrupted prompt")
    _add_generation_args(patch)
    patch.add_argument("--clean", required=True, help="the clean prompt")
    patch.add_argument("--corrupt", required=True, help="the corrupted prompt (same length after tokenising)")
    patch.add_argument("--sweep", choices=PATCH_SWEEPS, default="step-layer")
    patch.add_argument("--metric", choices=PATCH_METRICS, default="logit-diff")
    patch.add_argument("--mode", choices=("free", "chain", "step"), default="free")
    patch.add_argument("--layer", type=int, default=None, help="layer of the step-position sweep (default: middle)")
    patch.add_argument("--adaptive", action="store_true", help="keep adaptive stopping (default: every step runs)")
    patch.add_argument("--out", default="out/patch")
    patch.set_defaults(func=cmd_patch)

    study = commands.add_parser("case-study", help="run a case study; metrics.json and figures in out/NAME/")
    study.add_argument("name", choices=_study_names())
    study.add_argument("--model", default=None, help="HF DiffusionGemma folder (default: the bundled checkpoint)")
    study.add_argument("--n", type=int, default=100, help="examples per task")
    study.add_argument("--out", default=None, help="output folder (default: out/NAME)")
    study.add_argument("--seed", type=int, default=0)
    study.add_argument("--quick", action="store_true", help="the short version `diffinterp demo` runs")
    study.add_argument(
        "--tasks", default=None, help="comma-separated tasks, e.g. arith,hop (studies that take several)"
    )
    study.add_argument(
        "--bottleneck", default=None, help="self-conditioning: continuous | argmax | topk:K | sample | none"
    )
    study.add_argument("--steps", type=int, default=None, help="max denoising steps per canvas")
    study.set_defaults(func=cmd_case_study)

    _register_optional(commands)
    return parser


def _study_names() -> list[str]:
    from case_studies import STUDIES

    return sorted(STUDIES)


def _register_optional(commands) -> None:
    """Commands of packages built on this core (training, evaluation, case studies)."""
    try:
        from diffinterp.toy.commands import register
    except ImportError:
        return
    register(commands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"diffinterp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
