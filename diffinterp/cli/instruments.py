"""``diffinterp lens`` and ``diffinterp patch``: instrument figures of one prompt from the command line."""

from __future__ import annotations

from pathlib import Path

from diffinterp.cli.options import (
    add_generation_args,
    decode_text,
    default_prompt,
    generation_kwargs,
    parse_positions,
    prompt_ids,
)

PATCH_METRICS = ("logit-diff", "prob", "exact")
PATCH_SWEEPS = ("step-layer", "step-position", "path")


def register(commands) -> None:
    lens = commands.add_parser("lens", help="logit lens of one prompt: step x layer grids, commit order")
    add_generation_args(lens)
    lens.add_argument("--prompt", default=None, help="default: the checkpoint's demo prompt")
    lens.add_argument("--positions", default=None, help="canvas positions to draw, e.g. '0-3,8' (default 0-7)")
    lens.add_argument("--out", default="out/lens", help="output folder, replaced whole (default out/lens)")
    lens.set_defaults(func=cmd_lens)

    patch = commands.add_parser("patch", help="activation / path patching from a clean into a corrupted prompt")
    add_generation_args(patch)
    patch.add_argument("--clean", required=True, help="the clean prompt")
    patch.add_argument("--corrupt", required=True, help="the corrupted prompt (same length after tokenising)")
    patch.add_argument("--sweep", choices=PATCH_SWEEPS, default="step-layer", help="what to sweep (default step-layer)")
    patch.add_argument(
        "--metric", choices=PATCH_METRICS, default="logit-diff", help="restoration metric (default logit-diff)"
    )
    patch.add_argument(
        "--mode",
        choices=("free", "chain", "step"),
        default="free",
        help="free: re-generate after the patch; chain: patched steps feed the next; step: one step only",
    )
    patch.add_argument("--layer", type=int, default=None, help="layer of the step-position sweep (default: middle)")
    patch.add_argument(
        "--adaptive",
        action="store_true",
        help="keep adaptive stopping (default: every step runs); runs that stop apart are continued to the same step count",
    )
    patch.add_argument(
        "--save-runs",
        action="store_true",
        help="also save the clean run: clean.trajectory.safetensors, clean.cache.safetensors (for diffinterp view)",
    )
    patch.add_argument("--out", default="out/patch", help="output folder, replaced whole (default out/patch)")
    patch.set_defaults(func=cmd_patch)


def cmd_lens(args) -> int:
    """Logit lens of one prompt: a step x layer grid per position and the commit order, with numbers."""
    import json

    import torch

    from diffinterp.core.loading import load_model
    from diffinterp.figures import instruments as ip
    from diffinterp.figures.canvas import token_labels
    from diffinterp.instruments.lens import first_prediction, settle_steps, target_lens
    from diffinterp.records.files import atomic_folder, save_figure

    hm = load_model(args.model, quantize=args.quantize)
    positions = parse_positions(args.positions, hm.config.canvas_length)  # checked before the run
    input_ids, attention_mask = prompt_ids(hm, args.prompt, args.model)
    torch.manual_seed(args.seed)
    trajectory, cache = hm.run_with_cache(
        input_ids, "decoder.blocks.*.hook_resid_post", attention_mask=attention_mask, blocks=[0], progress=True,
        **generation_kwargs(args),
    )  # fmt: skip
    final = trajectory.block(0).final_canvas
    lens = target_lens(hm, cache, final)  # full-vocabulary argmax, no [steps, layers, pos, vocab] tensor
    first, settle = first_prediction(lens, final), settle_steps(trajectory)
    tokens = token_labels(final[0].tolist(), hm.tokenizer)
    rows = [
        {"position": p, "token": tokens[p], "settle_step": int(settle[0, p]),
         "lens_first_step": int(first.step[0, p]), "lens_first_layer": int(first.layer[0, p])}
        for p in positions
    ]  # fmt: skip
    print(f"output: {decode_text(hm, trajectory.new_tokens()[0])} ({trajectory.block(0).n_steps} steps)")
    print("position  token      settles at step  lens first predicts it at (step, layer)")
    for row in rows:
        print(f"{row['position']:8d}  {row['token']:<9}  {row['settle_step']:15d}  "
              f"({row['lens_first_step']}, {row['lens_first_layer']})")  # fmt: skip
    summary = {"prompt": args.prompt if args.prompt is not None else default_prompt(hm, args.model),
               "steps": trajectory.block(0).n_steps, "layers": lens.layers, "positions": rows}  # fmt: skip
    out = Path(args.out)
    with atomic_folder(out) as folder:  # the folder appears whole, with nothing of an earlier run in it
        grid = ip.logit_lens_grid(lens, final, positions=positions, tokenizer=hm.tokenizer)
        written = save_figure(grid, folder / "logit_lens")
        written += save_figure(
            ip.commit_order(trajectory, tokenizer=hm.tokenizer, first=first), folder / "commit_order"
        )
        (folder / "lens.json").write_text(json.dumps(summary, indent=2))
        written.append(folder / "lens.json")
    print("wrote " + ", ".join(str(out / p.relative_to(folder)) for p in written))
    return 0


def cmd_patch(args) -> int:
    """Activation or path patching from a clean prompt into a corrupted one, with the same random draws."""
    import json

    import torch

    from diffinterp.core.loading import load_model
    from diffinterp.figures import instruments as ip
    from diffinterp.instruments import patching as pt
    from diffinterp.records.decoding import special_ids
    from diffinterp.records.files import atomic_folder, save_figure

    for flag, text in (("--clean", args.clean), ("--corrupt", args.corrupt)):
        if not text.strip():
            raise ValueError(f"{flag} is empty: give the prompt text (both prompts are needed to patch)")
    hm = load_model(args.model, quantize=args.quantize)
    layer = hm.text_config.num_hidden_layers // 2 if args.layer is None else args.layer
    names = ["decoder.blocks.*.hook_resid_post", "decoder.hook_embed", "decoder.sc.hook_soft_embed"]
    gen = generation_kwargs(args)
    if not args.adaptive:
        # Adaptive stopping would let a patched run stop at another step than the clean one (or run
        # on past the patch), so by default every run takes all its steps: the stability check can
        # never pass when it needs as many stable steps as there are steps.
        gen["stability_threshold"] = args.max_denoising_steps or hm.model.generation_config.max_denoising_steps or 48
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
    restored = result.mean(normalised=True)
    print(f"clean:     {decode_text(hm, clean.new_tokens()[0])}")
    print(f"corrupted: {decode_text(hm, corrupt.new_tokens()[0])}")
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
    out = Path(args.out)
    with atomic_folder(out) as folder:  # the folder appears whole, with nothing of an earlier run in it
        written = save_figure(fig, folder / f"patching_{args.sweep}")
        (folder / "patching.json").write_text(json.dumps(summary, indent=2, default=str))
        written.append(folder / "patching.json")
        if args.save_runs:  # the run the heatmap's steps and positions refer to, for `diffinterp view`
            written += [
                clean.save(folder / "clean.trajectory.safetensors"),
                cache.save(folder / "clean.cache.safetensors"),
            ]
    print("wrote " + ", ".join(str(out / p.relative_to(folder)) for p in written))
    return 0
