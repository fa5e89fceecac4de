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

    check = commands.add_parser(
        "check", help="validate a checkpoint folder and print its memory plan (reads headers only; nothing loads)"
    )
    check.add_argument("folder", help="a DiffusionGemma checkpoint folder (or a bundled organism's name)")
    check.add_argument("--prompt-len", type=int, default=256, help="prompt tokens of the plan (default 256)")
    check.add_argument("--steps", type=int, default=None, help="denoising steps per canvas (default: the folder's)")
    check.add_argument("--canvases", type=int, default=1, help="canvases (blocks) per prompt (default 1)")
    check.add_argument(
        "--dtype", default=None, help="activation dtype of the plan: bfloat16, float32, ... (default: the weights')"
    )
    check.add_argument(
        "--devices",
        nargs="+",
        default=None,
        metavar="GiB",
        help="memory of each device in GiB (e.g. 141, or 80 80): whether the weights and one prompt fit",
    )
    check.set_defaults(func=cmd_check)

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


def cmd_check(args) -> int:
    """Check a checkpoint folder from its files' headers and print what a run on it needs."""
    import torch

    from diffinterp.core.checkpoint import check_checkpoint, memory_plan
    from diffinterp.core.inputs import as_dtype
    from diffinterp.core.loading import resolve_model_path
    from diffinterp.records.cache import human_bytes

    for flag, value in (("--prompt-len", args.prompt_len), ("--canvases", args.canvases), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    devices = []
    for value in args.devices or []:
        try:
            devices.append(float(value))
        except ValueError:
            raise ValueError(f"--devices takes each device's memory in GiB (e.g. 80), got {value!r}") from None
    report = check_checkpoint(resolve_model_path(args.folder))
    config = report.config
    steps = args.steps or int(report.generation.get("max_denoising_steps") or 48)
    stored = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    dtype = (
        as_dtype(args.dtype, "--dtype")
        if args.dtype
        else stored.get(max(report.weight_dtypes, key=report.weight_dtypes.get, default="BF16"), torch.bfloat16)
    )
    text = config.text_config
    print(f"# {report.folder}: ok")
    print(
        f"config: {text.num_hidden_layers} layers ({text.layer_types.count('sliding_attention')} sliding, "
        f"{text.layer_types.count('full_attention')} full), d_model {text.hidden_size}, {text.num_experts} experts "
        f"top-{text.top_k_experts}, vocabulary {text.vocab_size}, canvas {config.canvas_length}"
    )
    dtypes = ", ".join(f"{n} {d}" for d, n in sorted(report.weight_dtypes.items()))
    print(
        f"weights: {report.tensors} tensors ({dtypes}) in {len(report.weight_files)} file(s), "
        f"{report.parameters:,} parameters, {human_bytes(report.weight_bytes)}"
        + ("" if report.weights_present else " (index only: shard files absent)")
    )
    print(f"tokenizer: {report.tokenizer}")
    settings = {k: report.generation.get(k) for k in ("max_denoising_steps", "eos_token_id", "t_max", "t_min")}
    print("generation: " + ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None))
    for note in report.notes:
        print(f"note: {note}")
    rows = memory_plan(
        config,
        weight_bytes=report.weight_bytes,
        prompt_len=args.prompt_len,
        steps=steps,
        blocks=args.canvases,
        dtype=dtype,
    )
    print(f"\n## memory plan: one prompt of {args.prompt_len} tokens, {args.canvases} canvas(es) of {steps} steps, "
          f"activations in {str(dtype).replace('torch.', '')}\n")  # fmt: skip
    print("| what | bytes | counted |\n|---|---|---|")
    for row in rows:
        print(f"| {row.what} | {human_bytes(row.bytes)} | {row.how} |")
    if devices:
        kv = next(row.bytes for row in rows if row.what.startswith("KV cache"))
        need = report.weight_bytes + kv
        total = sum(devices) * 2**30
        verdict = "fits" if need <= total else "does not fit"
        print(
            f"\ndevices {' + '.join(f'{d:g} GiB' for d in devices)}: weights + KV cache of one prompt "
            f"{human_bytes(need)} {verdict} in {human_bytes(total)} ({need / total:.0%}); caches and logits "
            "need their own room (keep them on CPU with device='cpu', or record fewer hooks and steps)"
        )
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
