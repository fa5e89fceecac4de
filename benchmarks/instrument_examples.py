"""The worked examples of docs/instruments.md, on the bundled model: every figure and number there.

    python benchmarks/instrument_examples.py [--model PATH] [--pairs 8] [--probe-prompts 240] [--out docs/figures/instruments]

Writes PNG + SVG figures and ``numbers.json`` (every number quoted in docs/instruments.md) to
``--out``. Task: ``hop`` (latent multi-hop binding); clean prompts vs twins whose answer-bearing
value is another digit (``patching_sweep.hop_pairs``), run with the same random draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patching_sweep import checkpoint_id, full_schedule, setup  # noqa: E402

import diffinterp as di  # noqa: E402
from diffinterp.core.loading import bundled_model_path, checkpoint_metadata  # noqa: E402
from diffinterp.figures import instruments as ip  # noqa: E402
from diffinterp.figures.canvas import canvas_evolution, entropy_heatmap
from diffinterp.instruments import lens as lz  # noqa: E402
from diffinterp.instruments import patching as pt  # noqa: E402
from diffinterp.instruments import probes as pr  # noqa: E402
from diffinterp.records.files import save_figure  # noqa: E402


def _r(x, digits=3):
    return round(float(x), digits)


def attention_example(out: Path) -> None:
    """The quickstart's attention figure: carry, one prompt, step 2, layer 1 (a full-attention layer)."""
    carry = di.load_model("carry")
    ids, mask = carry.to_tokens(["carry 1 9 9 8 7 7 2 5 1 3"])
    torch.manual_seed(0)
    traj, cache = carry.run_with_cache(ids, "decoder.blocks.1.attn.hook_pattern", attention_mask=mask)
    save_figure(
        ip.attention_pattern(cache, traj, step=2, layer=1, tokenizer=carry.tokenizer), out / "attention_pattern"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy4", help="a model speaking toy4's tasks (the prompts are arith and hop)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--probe-prompts", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adaptive", action="store_true", help="keep adaptive stopping (default: all steps run)")
    parser.add_argument("--out", default="docs/figures/instruments")
    parser.add_argument(
        "--only", choices=["all", "attention"], default="all",
        help="attention: only the attention-pattern figure (on carry), not the toy4 examples",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    attention_example(out)
    if args.only == "attention":
        return
    numbers: dict = {"model": str(args.model or bundled_model_path()), "command": "python " + " ".join(sys.argv)}
    numbers["weights_sha256"] = checkpoint_id(args.model)
    numbers["trained"] = bool(checkpoint_metadata(args.model).get("trained", True))
    hm = di.load_model(args.model)
    tok = hm.tokenizer
    clock = time.perf_counter()

    names = ["decoder.blocks.*.hook_resid_post", "decoder.hook_embed", "decoder.sc.hook_soft_embed"]
    settings = {} if args.adaptive else full_schedule(hm)
    numbers["adaptive_stopping"] = args.adaptive
    clean, cache, corrupt, corrupt_cache, metric, (clean_p, corrupt_p) = setup(
        hm, args.pairs, names, differ=True, **settings
    )
    numbers["example_pair"] = [clean_p[0], corrupt_p[0]]
    numbers["steps_clean"] = clean.block(0).n_steps
    numbers["steps_corrupt"] = corrupt.block(0).n_steps
    logits_c, argmax_c = pt.final_outputs(hm, clean)
    logits_k, argmax_k = pt.final_outputs(hm, corrupt)
    numbers["clean_logit_diff"] = _r(metric(logits_c[None], argmax_c[None]).mean())
    numbers["corrupt_logit_diff"] = _r(metric(logits_k[None], argmax_k[None]).mean())
    numbers["answers_differ"] = _r((argmax_c[:, 0] != argmax_k[:, 0]).float().mean())

    # 1. canvas, entropy, logit lens, commit order: on an arith prompt (a longer answer), then on the hop pairs
    from diffinterp.organisms.batches import prompt_batch
    from diffinterp.organisms.catalog import task as catalog_task

    arith = [e for e in catalog_task("arith").test_set(40) if "c=" in e.answer][:4]
    ids, mask = prompt_batch([e.prompt for e in arith])
    torch.manual_seed(0)
    arith_traj, arith_cache = hm.run_with_cache(
        ids, "decoder.blocks.*.hook_resid_post", attention_mask=mask, **settings
    )
    numbers["arith_prompt"] = [arith[0].prompt, arith[0].answer]
    arith_lens = lz.logit_lens(hm, arith_cache)
    arith_final = arith_traj.block(0).steps[-1].argmax
    arith_first = lz.first_prediction(arith_lens, arith_final)
    arith_settle = lz.settle_steps(arith_traj)
    numbers["arith_settle_steps_row0"] = arith_settle[0].tolist()
    numbers["arith_lens_first_steps_row0"] = arith_first.step[0].tolist()
    numbers["arith_lens_first_layers_row0"] = arith_first.layer[0].tolist()
    numbers["arith_settle_step_mean"] = _r(arith_settle.float().mean(), 2)
    numbers["arith_lens_before_settle_fraction"] = _r(
        ((arith_first.step >= 0) & (arith_first.step < arith_settle)).float().mean()
    )
    save_figure(canvas_evolution(arith_traj, tokenizer=tok), out / "canvas_evolution")
    save_figure(entropy_heatmap(arith_traj), out / "entropy_heatmap")
    save_figure(ip.commit_order(arith_traj, tokenizer=tok, first=arith_first), out / "commit_order")
    save_figure(
        ip.logit_lens_grid(arith_lens, arith_final, positions=list(range(8)), tokenizer=tok), out / "logit_lens_grid"
    )
    lens = lz.logit_lens(hm, cache)
    numbers["lens_last_layer_equals_logits"] = bool(torch.equal(lens.logits[:, -1], clean.stack("logits")))
    first = lz.first_prediction(lens, argmax_c)
    settle = lz.settle_steps(clean)
    numbers["answer_first_lens_step_mean"] = _r(first.step[:, 0].float().mean(), 2)
    numbers["answer_first_lens_layer_mean"] = _r(first.layer[:, 0].float().mean(), 2)
    numbers["answer_settle_step_mean"] = _r(settle[:, 0].float().mean(), 2)
    numbers["settle_step_mean_all_positions"] = _r(settle.float().mean(), 2)
    numbers["lens_before_settle_fraction"] = _r(((first.step >= 0) & (first.step < settle)).float().mean())

    # 2. activation patching: step x layer (three modes), step x position
    sweeps = {}
    for mode in ("free", "chain", "step"):
        start = time.perf_counter()
        sweeps[mode] = pt.step_layer_sweep(hm, clean, corrupt, cache, metric, mode=mode)
        numbers[f"sweep_{mode}_seconds"] = _r(time.perf_counter() - start, 2)
        save_figure(ip.patching_heatmap(sweeps[mode]), out / f"patching_step_layer_{mode}")
    free = sweeps["free"].mean(normalised=True)
    numbers["free_restored_last_layer_last_step"] = _r(free[-1, -1])
    numbers["free_restored_max_by_step"] = [_r(v) for v in free.nan_to_num(-9).max(1).values]
    from diffinterp.organisms.tokenizer import EOS_ID, PAD_ID

    exact = pt.step_layer_sweep(hm, clean, corrupt, cache, pt.ExactMatch(argmax_c, eos_id=EOS_ID, pad_id=PAD_ID))
    numbers["exact_match_corrupt"] = _r(exact.corrupt.mean())
    numbers["exact_match_by_step_best_layer"] = [_r(v) for v in exact.mean().max(1).values]
    save_figure(
        ip.patching_heatmap(exact, normalised=False, title="Exact match of the clean output (free)"),
        out / "patching_exact_match",
    )
    middle = hm.text_config.num_hidden_layers // 2
    position = pt.step_position_sweep(
        hm, clean, corrupt, cache, metric, hook=f"decoder.blocks.{middle}.hook_resid_post"
    )
    save_figure(ip.patching_heatmap(position), out / "patching_step_position")
    by_pos = position.mean(normalised=True)
    numbers["position_sweep_hook"] = position.hook
    numbers["position_sweep_top_positions"] = by_pos.nan_to_num(-9).max(0).values.topk(3).indices.tolist()

    # 3. path patching through the step inputs
    path = pt.path_patching(hm, clean, corrupt, metric, clean_cache=cache)
    save_figure(ip.path_patching_plot(path), out / "path_patching")
    fractions = path.mean(normalised=True)
    numbers["path_channels"] = path.axes["channel"]
    numbers["path_fraction_mean_over_steps"] = {
        c: _r(fractions[i].nanmean()) for i, c in enumerate(path.axes["channel"])
    }
    numbers["path_fraction_max_over_steps"] = {
        c: _r(fractions[i].nan_to_num(-9).max()) for i, c in enumerate(path.axes["channel"])
    }
    chain_path = pt.path_patching(hm, clean, corrupt, metric, clean_cache=cache, mode="chain")
    cf = chain_path.mean(normalised=True)
    numbers["path_chain_fraction_mean_over_steps"] = {
        c: _r(cf[i].nanmean()) for i, c in enumerate(chain_path.axes["channel"])
    }

    # 4. attribution patching vs activation patching
    start = time.perf_counter()
    attribution = pt.attribution_patching(hm, cache, corrupt, metric)
    numbers["attribution_seconds"] = _r(time.perf_counter() - start, 2)
    estimate = attribution.per_step_layer()
    chain_effect = sweeps["chain"].values - sweeps["chain"].corrupt
    free_effect = sweeps["free"].values - sweeps["free"].corrupt
    numbers["attribution_vs_chain_r_step_layer"] = _r(pt.correlation(estimate, chain_effect))
    numbers["attribution_vs_free_r_step_layer"] = _r(pt.correlation(estimate, free_effect))
    layer = hm.text_config.num_hidden_layers - 1
    runs = [
        pt.Patch(f"decoder.blocks.{layer}.hook_resid_post", s, 0, [p])
        for s in attribution.steps
        for p in range(clean.canvas_length)
    ]
    start = time.perf_counter()
    per_position = pt.run_patches(hm, corrupt, cache, runs, metric, mode="chain").view(
        len(attribution.steps), clean.canvas_length, -1
    )
    numbers["chain_per_position_seconds"] = _r(time.perf_counter() - start, 2)
    base = pt.run_patches(hm, corrupt, cache, [[]], metric, mode="chain")[0]
    numbers["attribution_vs_chain_r_step_position_last_layer"] = _r(
        pt.correlation(attribution.values[:, -1].permute(0, 2, 1), per_position - base)
    )
    save_figure(ip.attribution_scatter(estimate, chain_effect), out / "attribution_vs_chain")
    save_figure(
        ip.attribution_scatter(estimate, free_effect, xlabel="activation patching (free)"), out / "attribution_vs_free"
    )

    # 5. probes: the hop answer from each (step, layer)
    examples = catalog_task("hop").test_set(args.probe_prompts)
    ids, mask = prompt_batch([e.prompt for e in examples])
    torch.manual_seed(0)
    probe_traj, probe_cache = hm.run_with_cache(
        ids, "decoder.blocks.*.hook_resid_post", attention_mask=mask, **settings
    )
    labels = [e.answer for e in examples]
    del probe_traj
    probes = pr.train_probes(probe_cache, labels, position=0, seed=0)
    save_figure(ip.probe_heatmap(probes), out / "probe_accuracy")
    numbers["probe_prompts"] = len(examples)
    numbers["probe_n_test"] = probes.n_test
    numbers["probe_majority"] = _r(probes.majority)
    numbers["probe_accuracy_step0_best_layer"] = _r(probes.accuracy[0].max())
    numbers["probe_accuracy_last_step_by_layer"] = [_r(v) for v in probes.accuracy[-1]]
    numbers["probe_accuracy_max"] = _r(probes.accuracy.max())
    numbers["probe_control_max"] = _r(probes.control.max())
    numbers["probe_control_mean"] = _r(probes.control.mean())
    numbers["total_seconds"] = _r(time.perf_counter() - clock, 1)
    (out / "numbers.json").write_text(json.dumps(numbers, indent=2))
    print(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
