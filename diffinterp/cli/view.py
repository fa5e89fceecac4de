"""``diffinterp view``: the interactive trajectory viewer, written as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    view = commands.add_parser(
        "view",
        help="an interactive viewer of a saved trajectory: one HTML file that opens offline",
        description="Write one self-contained HTML page (no server, no network) to scrub a trajectory's "
        "denoising steps, with top-k probabilities, the logit lens, attention and patching heatmaps.",
    )
    view.add_argument(
        "trajectory", help="a trajectory file (.safetensors, as `diffinterp run` or Trajectory.save writes)"
    )
    view.add_argument("--cache", default=None, help="its cache file: hook_resid_post (logit lens), attn.hook_pattern")
    view.add_argument(
        "--patching",
        action="append",
        default=[],
        metavar="FILE",
        help="a patching.json of `diffinterp patch` (repeatable)",
    )
    view.add_argument(
        "--model",
        default=None,
        help="a bundled organism or an HF DiffusionGemma folder: the model that ran it, for token strings and "
        "the logit lens (default: the default bundled model)",
    )
    view.add_argument(
        "--tokenizer", default=None, help="a tokenizer folder: token strings without loading a model (no lens)"
    )
    view.add_argument(
        "--sae",
        action="append",
        default=[],
        metavar="DIR",
        help="an SAE folder of `diffinterp sae train` (repeatable): its features over steps and positions; "
        "its hook must be in --cache",
    )
    view.add_argument(
        "--features",
        default=None,
        help="comma-separated SAE feature indices to show (default: the --top-features that change most over the run)",
    )
    view.add_argument("--top-features", type=int, default=8, help="features per SAE without --features (default 8)")
    view.add_argument("--top-k", type=int, default=10, help="top tokens per position and step (default 10)")
    view.add_argument(
        "--max-attention-mb", type=float, default=16.0, help="limit on the shipped attention (default 16)"
    )
    view.add_argument("--title", default=None, help="page title (default: the trajectory file name)")
    view.add_argument("--out", default="view.html", help="the page to write (default view.html)")
    view.set_defaults(func=cmd_view)


def cmd_view(args) -> int:
    """Load the run, compute what the page shows (top-k, lens, attention, heatmaps) and write the page."""
    import json
    import math

    from diffinterp.cli.options import distinct_outputs
    from diffinterp.figures.viewer import render_page, view_data
    from diffinterp.records.cache import DenoisingCache
    from diffinterp.records.files import write_text_atomic
    from diffinterp.records.trajectory import Trajectory

    # Every value is checked before anything loads: a bad flag is named at once, not after a model load.
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if not (math.isfinite(args.max_attention_mb) and args.max_attention_mb >= 0):
        raise ValueError(f"--max-attention-mb must be at least 0, got {args.max_attention_mb}")
    if args.top_features < 1:
        raise ValueError(f"--top-features must be at least 1, got {args.top_features}")
    features = _feature_list(args.features)
    if args.sae and not args.cache:
        raise ValueError("--sae reads the SAE's hook from the run's cache: give --cache (a cache holding that hook)")
    for folder in args.sae:
        if not (Path(folder) / "cfg.json").is_file():
            raise ValueError(
                f"--sae {folder} is not an SAE folder (no cfg.json); `diffinterp sae train --out` writes one"
            )
    inputs = [_existing(args.trajectory, "trajectory")]
    if args.cache:
        inputs.append(_existing(args.cache, "cache"))
    inputs += [_existing(name, "patching file") for name in args.patching]
    if Path(args.out).is_dir():
        raise ValueError(
            f"--out {args.out} is a folder; give the path of the page to write (e.g. {args.out}/view.html)"
        )
    distinct_outputs(*inputs, args.out)  # the page never replaces one of its inputs
    patching = []
    for name in args.patching:
        try:
            loaded = json.loads(Path(name).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{name} is not a JSON patching file ({err})") from None
        if not isinstance(loaded, dict):
            raise ValueError(
                f"{name} holds a JSON {type(loaded).__name__}; a patching file is an object (patching.json)"
            )
        patching.append(loaded)
    trajectory = Trajectory.load(inputs[0])
    cache = DenoisingCache.load(inputs[1]) if args.cache else None
    hm, tokenizer = _model_and_tokenizer(args, trajectory)
    saes = [_feature_selection(folder, features, args.top_features) for folder in args.sae]
    data = view_data(
        trajectory,
        cache,
        hm=hm,
        tokenizer=tokenizer,
        patching=patching,
        saes=saes,
        k=args.top_k,
        max_attention_bytes=int(args.max_attention_mb * 2**20),
        title=args.title or f"diffinterp view: {Path(args.trajectory).name}",
    )
    out = write_text_atomic(args.out, render_page(data))
    shown = {
        "top-k": any(b["topk"] for b in data["blocks"]),
        "logit lens": any(b["lens"] for b in data["blocks"]),
        "attention": any(b["attention"] for b in data["blocks"]),
        "patching": bool(data["patching"]),
        "SAE features": any(b["features"] for b in data["blocks"]),
    }
    missing = [name for name, present in shown.items() if not present]
    print(f"{trajectory.batch_size} prompts, {len(trajectory.blocks)} canvases, steps {trajectory.steps_per_block}")
    if missing:
        print("not in this page (not recorded): " + ", ".join(missing))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)")
    return 0


def _feature_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        features = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--features takes comma-separated feature indices, e.g. 3,17; got {text!r}") from None
    if not features:
        raise ValueError(f"--features names no feature ({text!r})")
    return features


def _feature_selection(folder: str, features, top: int):
    from diffinterp.figures.viewer import FeatureSelection
    from diffinterp.instruments.saes.training import load_sae, sae_hook

    sae, metadata = load_sae(folder)
    hook = sae_hook(sae, metadata)
    return FeatureSelection(sae, hook, features=features, top=top, name=f"{Path(folder).name}: {hook}")


def _existing(path: str, what: str) -> Path:
    if not Path(path).is_file():
        raise ValueError(f"no {what} at {path}" + (" (it is a folder)" if Path(path).is_dir() else ""))
    return Path(path)


def _model_and_tokenizer(args, trajectory):
    """``(hm, tokenizer)``: the model given (or the default bundled one) unless only a tokenizer folder is given."""
    from diffinterp.core.loading import load_model, load_tokenizer

    if args.tokenizer is not None and args.model is None:
        folder = _existing_folder(args.tokenizer)
        tokenizer = load_tokenizer(folder)
        if tokenizer is None:
            raise ValueError(f"{folder} has no tokenizer.json or tokenizer_config.json")
        return None, tokenizer
    hm = load_model(args.model)
    check_model_matches(hm, trajectory, args.model)
    tokenizer = load_tokenizer(_existing_folder(args.tokenizer)) if args.tokenizer is not None else hm.tokenizer
    return hm, tokenizer


def _existing_folder(path: str) -> Path:
    if not Path(path).is_dir():
        raise ValueError(f"no tokenizer folder at {path}")
    return Path(path)


def check_model_matches(hm, trajectory, name=None) -> None:
    """Raise unless ``trajectory`` could come from ``hm`` (canvas length, vocabulary)."""
    from diffinterp.core.loading import DEFAULT_MODEL

    which = f"model '{name}'" if name else f"default model '{DEFAULT_MODEL}'"
    hint = "give the model that ran it (--model NAME|PATH) or only its tokenizer (--tokenizer FOLDER)"
    canvas = hm.config.canvas_length
    if trajectory.canvas_length != canvas:
        raise ValueError(
            f"the trajectory's canvas has {trajectory.canvas_length} positions, the {which}'s {canvas}: {hint}"
        )
    vocab = hm.text_config.vocab_size
    largest = int(trajectory.sequences.max())
    logits = trajectory.blocks[0].steps[0].logits if trajectory.blocks and trajectory.blocks[0].steps else None
    if largest >= vocab or (logits is not None and logits.shape[-1] != vocab):
        raise ValueError(f"the trajectory's tokens do not fit the {which}'s vocabulary of {vocab}: {hint}")
