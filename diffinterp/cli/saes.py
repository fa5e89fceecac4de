"""``diffinterp sae train`` and ``diffinterp sae eval``: SAEs over denoising time (SAELens)."""

from __future__ import annotations

from diffinterp.cli.options import add_generation_args, generation_kwargs


def register(commands) -> None:
    sae = commands.add_parser("sae", help="sparse autoencoders over denoising time (SAELens): train, eval")
    actions = sae.add_subparsers(dest="sae_command", required=True, help="train or eval")

    train = actions.add_parser("train", help="train a Top-K (or standard) SAE on one hook's activations")
    add_generation_args(train)
    train.add_argument("--hook", required=True, help="a decoder hook, e.g. decoder.blocks.1.hook_resid_post")
    train.add_argument("--steps", default="all", help="denoising steps whose activations train it: '0-7', '0,2', 'all'")
    train.add_argument("--positions", choices=("all", "masked", "accepted"), default="all",
                       help="canvas positions: all, masked (not yet accepted) or accepted (default all)")  # fmt: skip
    train.add_argument("--architecture", choices=("topk", "standard"), default="topk", help="SAELens architecture")
    train.add_argument("--width", type=int, default=512, help="SAE features (default 512)")
    train.add_argument("--k", type=int, default=16, help="active features per input, Top-K (default 16)")
    train.add_argument("--l1", type=float, default=5.0, help="L1 coefficient, standard SAEs (default 5)")
    train.add_argument("--training-steps", type=int, default=1000, help="optimiser steps (default 1000)")
    train.add_argument("--batch-size", type=int, default=256, help="activations per step (default 256)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--prompts-per-run", type=int, default=64, help="prompts generated per collection run")
    train.add_argument("--held-out", type=int, default=64, help="held-out prompts for the final metrics")
    train.add_argument("--out", required=True, help="output folder (SAELens format), replaced whole")
    train.set_defaults(func=cmd_train)

    evaluate = actions.add_parser("eval", help="per-step reconstruction and the splice table of a trained SAE")
    add_generation_args(evaluate)
    evaluate.add_argument("sae", help="a folder `diffinterp sae train` wrote")
    evaluate.add_argument("--n", type=int, default=100, help="held-out prompts (default 100)")
    evaluate.add_argument("--json", default=None, help="also write the tables here")
    evaluate.set_defaults(func=cmd_eval)


def cmd_train(args) -> int:
    import torch

    from diffinterp import studies
    from diffinterp.core.loading import load_model
    from diffinterp.figures.saes import training_curves
    from diffinterp.instruments.saes.activations import ActivationSpec, activation_stream, parse_steps, step_activations
    from diffinterp.instruments.saes.training import SAETrainingConfig, train_sae
    from diffinterp.records.files import save_figure

    spec = ActivationSpec(args.hook, steps=parse_steps(args.steps), positions=args.positions)
    config = SAETrainingConfig(spec, architecture=args.architecture, width=args.width, k=args.k,
                               l1_coefficient=args.l1, training_samples=args.training_steps * args.batch_size,
                               batch_size=args.batch_size, lr=args.lr, seed=args.seed)  # fmt: skip
    hm = load_model(args.model, quantize=args.quantize)
    hm.resolve_names([args.hook])  # an unknown hook is named before anything runs
    kwargs = generation_kwargs(args)
    tasks = list(studies.model_tasks(hm)) or [studies.RANDOM_TASK]
    held = studies.prompt_set(hm, tasks[0], args.held_out, seed=args.seed)
    torch.manual_seed(args.seed)
    held_out, _ = step_activations(hm, held.input_ids, held.attention_mask, spec, **kwargs)
    batches = studies.training_prompt_batches(hm, args.prompts_per_run, seed=args.seed)
    stream = activation_stream(hm, batches, spec, batch_size=args.batch_size, seed=args.seed, **kwargs)
    name = studies.model_info(hm)["name_or_path"]
    result = train_sae(hm, stream, config, out=args.out, held_out=held_out, progress=True, model_name=name)
    save_figure(training_curves({spec.hook: result.curve}, f"SAE on {spec.describe()}"), f"{args.out}/training_curve")
    metrics = result.held_out
    print(f"SAE ({args.architecture}, {args.width} features) on {spec.describe()}: held-out explained variance "
          f"{metrics['explained_variance']:.3f}, MSE {metrics['mse']:.4g}, L0 {metrics['l0']:.1f} (n = {metrics['n']} activations)")  # fmt: skip
    print(f"saved to {args.out} (sae_lens.SAE.load_from_disk reads it), training curve {args.out}/training_curve.png")
    return 0


def cmd_eval(args) -> int:

    import torch

    from diffinterp import studies
    from diffinterp.core.loading import load_model
    from diffinterp.instruments.saes.splicing import reconstruction_by_step, splice_by_step
    from diffinterp.instruments.saes.training import load_sae, sae_hook
    from diffinterp.organisms.batches import canvas_batch
    from diffinterp.records.files import write_json_atomic

    sae, metadata = load_sae(args.sae)
    hm = load_model(args.model, quantize=args.quantize)
    hook = sae_hook(sae, metadata)
    kwargs = generation_kwargs(args)
    tasks = list(studies.model_tasks(hm)) or [studies.RANDOM_TASK]
    prompts = studies.prompt_set(hm, tasks[0], args.n, seed=args.seed, offset=1000)
    torch.manual_seed(args.seed)
    rows = reconstruction_by_step(hm, sae, hook, prompts.input_ids, prompts.attention_mask, **kwargs)
    print(f"{hook}: reconstruction per denoising step (n = {args.n} prompts)")
    print("step  activations  MSE       explained variance  L0")
    for row in rows:
        print(
            f"{row['step']:>4}  {row['n']:>11}  {row['mse']:<8.4g}  {row['explained_variance']:>18.3f}  {row['l0']:.1f}"
        )
    result = {"hook": hook, "reconstruction_by_step": rows}
    if prompts.answers is not None:
        torch.manual_seed(args.seed)
        targets = canvas_batch(prompts.answers, hm.config.canvas_length)
        result["splice"] = table = splice_by_step(
            hm, sae, hook, prompts.input_ids, prompts.attention_mask, targets, seed=args.seed, **kwargs
        )
        print(f"spliced at one step (clean accuracy {table['clean_accuracy']['value']:.3f}):")
        print("step  rows  CE clean  CE spliced  ΔCE per row [95% CI]      accuracy clean  accuracy spliced")
        for row in table["steps"]:
            delta = row["delta_ce"]
            interval = "—" if delta["value"] is None else (
                f"{delta['value']:+.3f} [{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}]")  # fmt: skip
            print(f"{row['step']:>4}  {row['n']:>4}  {row['ce_clean']:>8.3f}  {row['ce_spliced']:>10.3f}  "
                  f"{interval:<24}  {row['accuracy_clean']['value']:>14.3f}  {row['accuracy_spliced']['value']:>16.3f}")  # fmt: skip
    if args.json:
        write_json_atomic(args.json, result)
    return 0
