"""``diffinterp hooks`` and ``diffinterp depth``: the model's structure (hook points, serial depth), from
the meta device or a checkpoint."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    hooks = commands.add_parser("hooks", help="list hook names with their shapes")
    hooks.add_argument(
        "--config", default="bundled", help="real (26B-A4B, meta device) | tiny | bundled | an organism | PATH"
    )
    hooks.add_argument("--batch", type=int, default=1, help="batch size of the shapes (default 1)")
    hooks.add_argument("--prompt-len", type=int, default=16, help="prompt tokens of the shapes (default 16)")
    hooks.add_argument("--block", type=int, default=0, help="canvas (block) index (default 0)")
    hooks.set_defaults(func=cmd_hooks)

    depth = commands.add_parser("depth", help="opaque serial depth: AR Gemma 4 vs DiffusionGemma (meta device)")
    depth.add_argument("--config", default="real", help="real (26B-A4B) | tiny | PATH to a DiffusionGemma folder")
    depth.add_argument("--ar", default=None, help="AR twin folder for --config PATH (default: the bundled twin)")
    depth.add_argument(
        "--chain-lengths", type=int, nargs="+", default=[48], help="numbers of chained denoising steps N to report"
    )
    depth.add_argument("--prompt-len", type=int, default=16, help="prompt tokens of the traced run (default 16)")
    depth.add_argument("--trace-steps", type=int, default=4, help="steps traced per mode (>= N traces every step)")
    depth.add_argument("--json", default=None, help="also write the table as JSON here")
    depth.set_defaults(func=cmd_depth)


def cmd_hooks(args) -> int:
    """List every hook point with its shape."""
    from diffinterp.core.configs import meta_model, real_config, tiny_config
    from diffinterp.core.hooked import HookedDiffusionGemma
    from diffinterp.core.loading import load_hf_model

    for flag, value, low in (
        ("--batch", args.batch, 1),
        ("--prompt-len", args.prompt_len, 1),
        ("--block", args.block, 0),
    ):
        if value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    if args.config == "real":
        model = meta_model(real_config())
    elif args.config == "tiny":
        model = meta_model(tiny_config())
    elif args.config == "bundled":
        model = load_hf_model(None)
    else:  # a bundled organism's name or a checkpoint folder
        model = load_hf_model(args.config)
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


CONVENTIONS = """
Two conventions for the top-k / top-p bottleneck, both defensible:
- interpretable (the paper's, beside its 1.1x): the state between steps is a short list of named tokens
  that a reader inspects through the logit lens, so reading it resets the chain like a written token;
- opaque: the kept probabilities are real numbers the next step computes with, and a few bits of
  computation can hide in them, so the chain runs on through every step (an upper bound)."""


def cmd_depth(args) -> int:
    """Print the opaque-serial-depth table (AR Gemma 4 vs DiffusionGemma by signal mode)."""
    import time

    from diffinterp.depth.accounting import depth_table, format_table
    from diffinterp.organisms.twin import bundled_ar_path
    from diffinterp.records.files import write_json_atomic

    check_model_config(args.config)
    if min(args.chain_lengths) < 1 or args.trace_steps < 1 or args.prompt_len < 1:
        raise ValueError("--chain-lengths, --trace-steps and --prompt-len must all be at least 1")
    start = time.perf_counter()
    ar_path = args.ar
    if ar_path is None and args.config not in ("real", "tiny"):
        ar_path = bundled_ar_path()
    rows, details = depth_table(
        args.config, args.chain_lengths, ar_path=ar_path, prompt_len=args.prompt_len, trace_steps=args.trace_steps
    )
    print(format_table(rows))
    print(
        f"\nAR depth per token: {details['ar_depth']}; the continuous chain reaches the paper's 28.6x after "
        f"{details['steps_for_paper_naive_ratio']:.1f} steps; traced steps per mode: {args.trace_steps} "
        f"(longer chains extrapolate the fixed per-step increment); {time.perf_counter() - start:.0f} s"
    )
    print(CONVENTIONS)
    if args.json:
        write_json_atomic(args.json, {"rows": [r.__dict__ for r in rows], "details": details})
    return 0


def check_model_config(config: str) -> None:
    """``--config`` is ``real``, ``tiny`` or an existing DiffusionGemma folder (never a hub name: no network)."""
    if config in ("real", "tiny"):
        return
    folder = Path(config)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--config {config!r} is neither 'real', 'tiny' nor a folder with a config.json")
