"""Variable transparency: opaque serial depth of DiffusionGemma vs AR Gemma 4, and what the token
bottleneck costs in accuracy.

    from case_studies import variable_transparency
    metrics = variable_transparency.run(out_dir="out/variable_transparency")

1. The depth table (``diffinterp.depth.accounting``): the released 26B-A4B structure on the meta
   device (or any config), AR per token vs diffusion per step, chained over N steps for each
   self-conditioning signal, N = 48 (the default maximum) and the mean number of steps the
   evaluated model actually uses.
2. The bottleneck's cost: exact-match accuracy per task of the (bundled) model under each
   bottleneck mode, with 95% Wilson intervals, and how often each mode's outputs equal the
   continuous run's.

Writes ``metrics.json``, ``depth_table.md`` and figures (PNG + SVG) to ``out_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffinterp.depth import accounting as da
from diffinterp.figures.transparency import accuracy_per_mode, depth_per_step
from diffinterp.organisms.twin import bundled_ar_path
from diffinterp.records.files import save_figure

DEFAULT_MODES = ("continuous", "argmax", "topk:4", "sample", "none")


def bottleneck_accuracy(hm, modes=DEFAULT_MODES, tasks=None, n: int = 100, seed: int = 0) -> dict[str, Any]:
    """Accuracy per task and mode (with 95% CIs), mean steps, and agreement with continuous outputs."""
    from diffinterp.organisms import tasks as toy_tasks
    from diffinterp.organisms.evaluate import predict

    results: dict[str, dict[str, dict]] = {}
    for task in tasks or toy_tasks.TASKS:
        examples = toy_tasks.test_set(task, n)
        prompts = [example.prompt for example in examples]
        outputs = {}
        results[task] = {}
        for mode in modes:
            predictions, steps = predict(hm, prompts, bottleneck=mode, seed=seed)
            outputs[mode] = predictions
            correct = sum(toy_tasks.exact_match(p, e) for p, e in zip(predictions, examples, strict=True))
            low, high = toy_tasks.wilson_interval(correct, len(examples))
            agree = sum(p == q for p, q in zip(predictions, outputs[modes[0]], strict=True))
            results[task][mode] = {
                "accuracy": correct / len(examples),
                "ci_low": low,
                "ci_high": high,
                "n": len(examples),
                "mean_steps_per_canvas": sum(steps) / len(steps),
                "agreement_with_continuous": agree / len(examples),
            }
    return results


def run(
    model=None,
    *,
    n: int = 100,
    out_dir: str | Path = "out/variable_transparency",
    config: str = "real",
    modes=DEFAULT_MODES,
    tasks=None,
    max_steps: int = 48,
    seed: int = 0,
    quick: bool = False,
) -> dict[str, Any]:
    """Run both parts on ``model`` (default: the bundled one); write metrics and figures; the metrics."""
    import diffinterp as di

    out = Path(out_dir)
    hm = model if model is not None else di.load_model()
    n = min(n, 24) if quick else n
    accuracy = bottleneck_accuracy(hm, modes, tasks, n, seed)
    continuous = [per_mode[modes[0]]["mean_steps_per_canvas"] for per_mode in accuracy.values()]
    mean_steps = sum(continuous) / len(continuous)
    step_counts = [max_steps, max(1, round(mean_steps))]
    ar_path = None if config in ("real", "tiny") else bundled_ar_path()  # a folder config: the bundled twin
    rows, details = da.depth_table(config, step_counts, ar_path=ar_path, trace_steps=4)
    chains = {
        key: [da.chain_depth(depths, s) for s in range(1, max_steps + 1)]
        for key, depths in details["traced_step_depths"].items()
    }
    save_figure(depth_per_step(chains, details["ar_depth"], max_steps), out / "depth_per_step")
    save_figure(accuracy_per_mode(accuracy), out / "accuracy_per_mode")
    table = da.format_table(rows)
    (out / "depth_table.md").write_text(table + "\n")
    metrics = {
        "config": config,
        "mean_steps_per_canvas": mean_steps,
        "step_counts": step_counts,
        "depth_rows": [row.__dict__ for row in rows],
        "depth_details": details,
        "bottleneck_accuracy": accuracy,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
