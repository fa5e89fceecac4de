"""The organisms' acceptance table: is each organism's denoising loop load-bearing?

For every bundled organism (or those named) and each of its tasks, on the held-out split (n = 400):

- full-run exact match with its 95% Wilson interval (the shipped sampler settings);
- one-pass exact match (``max_denoising_steps=1``: the step-0 argmax);
- the share of final tokens at the phenomenon's positions (the task's ground-truth ``focus``) that
  equal the step-0 argmax;
- exact match as ``max_denoising_steps`` grows (1, 2, 4, 8, 16, 32): the curve in docs/model.md;
- the autoregressive twin's exact match on the same prompts;
- for ``gold``: exact match with the self-conditioning signal removed (``bottleneck="none"``) and
  through the argmax token bottleneck.

    python benchmarks/organism_gates.py [--organisms carry latin ...] [--n 400] [--json FILE] [--figure FILE]

Writes the JSON (default ``docs/results/organism_gates.json``) and the curve figure (default
``docs/figures/organisms/accuracy_vs_steps.png``); about 10 minutes on 2 cores for all organisms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffinterp.core.loading import bundled_models, load_model  # noqa: E402
from diffinterp.organisms.catalog import ORGANISMS, task  # noqa: E402
from diffinterp.organisms.evaluate import evaluate_task  # noqa: E402
from diffinterp.organisms.task import Example  # noqa: E402
from diffinterp.organisms.tokenizer import token_ids  # noqa: E402
from diffinterp.organisms.twin import load_ar_baseline  # noqa: E402
from diffinterp.phenomena.gate import focus_mask, step0_agreement  # noqa: E402
from diffinterp.records.files import save_figure, write_json_atomic  # noqa: E402
from diffinterp.stats import proportion  # noqa: E402

STEPS = (1, 2, 4, 8, 16, 32)


def focus_step0(hm, examples: list[Example], batch_size: int, seed: int) -> dict:
    """Share of final tokens equal to the step-0 argmax at the focus positions (as ``evaluate_task`` seeds)."""
    spec = task(examples[0].task)
    same = total = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask = hm.to_tokens([e.prompt for e in chunk])
        torch.manual_seed(seed + start)
        traj = hm.generate(ids, attention_mask=mask)
        record = traj.block(0)
        positions = [(spec.truth(e) if spec.truth else {}).get("focus", range(len(token_ids(e.answer)))) for e in chunk]
        counts = step0_agreement(
            record.steps[0].argmax.cpu(), record.final_canvas.cpu(), focus_mask(positions, traj.canvas_length)
        )
        same, total = same + counts["k"], total + counts["n"]
    return proportion(same, total)


def organism_rows(name: str, n: int, batch_size: int, seed: int) -> dict:
    hm = load_model(name)
    spec = ORGANISMS[name]
    try:
        twin = load_ar_baseline(name)
    except (FileNotFoundError, ValueError):
        twin = None
    out = {}
    for task_name in spec.tasks:
        examples = task(task_name).test_set(n)
        t0 = time.time()
        keep = ("accuracy", "ci_low", "ci_high", "n", "correct", "mean_steps_per_canvas", "final_equals_step0")
        full = evaluate_task(hm, task_name, examples=examples, batch_size=batch_size, seed=seed)
        row = {"full": {k: full[k] for k in keep}}
        curve = {}
        for steps in STEPS:
            res = evaluate_task(
                hm, task_name, examples=examples, batch_size=batch_size, seed=seed, max_denoising_steps=steps
            )
            curve[str(steps)] = {k: res[k] for k in ("accuracy", "ci_low", "ci_high", "n")}
        row["one_pass"] = curve["1"]
        row["accuracy_vs_max_denoising_steps"] = curve
        row["focus_final_equals_step0"] = focus_step0(hm, examples, batch_size, seed)
        if twin is not None:
            ar = evaluate_task(twin, task_name, examples=examples, batch_size=batch_size, model_kind="ar")
            row["ar_twin"] = {k: ar[k] for k in ("accuracy", "ci_low", "ci_high", "n", "correct")}
        if spec.name == "gold":
            for mode in ("none", "argmax", "topk:8"):
                res = evaluate_task(hm, task_name, examples=examples, batch_size=batch_size, seed=seed, bottleneck=mode)
                row[f"bottleneck_{mode}"] = {k: res[k] for k in ("accuracy", "ci_low", "ci_high", "n")}
        full_acc, one = row["full"]["accuracy"], row["one_pass"]["accuracy"]
        row["gate"] = {
            "one_pass_gap": full_acc - one,
            "loop_gap_ok": full_acc - one >= 0.25,
            "step0_share_ok": (row["focus_final_equals_step0"]["value"] or 0) <= 0.70,
        }
        row["seconds"] = round(time.time() - t0, 1)
        out[task_name] = row
        print(
            f"{name}/{task_name}: full {full_acc:.3f} [{row['full']['ci_low']:.3f}, {row['full']['ci_high']:.3f}] "
            f"one-pass {one:.3f} focus step0 {row['focus_final_equals_step0']['value']:.3f} "
            + (f"AR {row['ar_twin']['accuracy']:.3f} " if "ar_twin" in row else "")
            + f"({row['seconds']} s)",
            flush=True,
        )
    return out


def curve_figure(results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffinterp.figures.style import OKABE_ITO, STYLE

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.2, 3.6), layout="constrained")
        k = 0
        for name, tasks in results.items():
            for task_name, row in tasks.items():
                curve = row["accuracy_vs_max_denoising_steps"]
                xs = [int(s) for s in curve]
                ys = [curve[s]["accuracy"] for s in curve]
                low = [y - curve[s]["ci_low"] for y, s in zip(ys, curve, strict=True)]
                high = [curve[s]["ci_high"] - y for y, s in zip(ys, curve, strict=True)]
                ax.errorbar(xs, ys, yerr=[low, high], marker="o", markersize=3, capsize=2,
                            color=OKABE_ITO[k % len(OKABE_ITO)], linestyle="-" if k < 8 else "--",
                            label=f"{name}/{task_name}")  # fmt: skip
                k += 1
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(STEPS))
        ax.set_xticklabels([str(s) for s in STEPS])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("max denoising steps per canvas")
        ax.set_ylabel("held-out exact match (95% CI)")
        ax.set_title("Accuracy rises with denoising steps: the loop is load-bearing", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organisms", nargs="+", default=None, help="organism names (default: every bundled one)")
    parser.add_argument("--n", type=int, default=400, help="held-out examples per task")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="docs/results/organism_gates.json")
    parser.add_argument("--figure", default="docs/figures/organisms/accuracy_vs_steps.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.organisms or [name for name in bundled_models() if name in ORGANISMS]
    results = {name: organism_rows(name, args.n, args.batch_size, args.seed) for name in names}
    write_json_atomic(args.json, {"command": "python " + " ".join(sys.argv), "n": args.n, "organisms": results})
    save_figure(curve_figure(results), args.figure)
    print(f"wrote {args.json} and {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
