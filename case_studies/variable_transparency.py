"""Variable transparency: opaque serial depth of DiffusionGemma vs AR Gemma 4, and what the token
bottleneck costs in accuracy.

    from case_studies import variable_transparency
    metrics = variable_transparency.run(out_dir="out/variable_transparency")

1. The depth table (``diffinterp.depth.accounting``): the released 26B-A4B structure on the meta
   device (or any config), AR per token vs diffusion per step, chained over N steps for each
   self-conditioning signal, N = 48 (the default maximum) and the mean number of steps the
   evaluated model actually uses.
   The paper's token bottleneck (top-k / top-p tokens of the self-conditioning signal) is counted
   both ways: interpretable (the paper's convention, beside its 1.1x) and opaque.
2. The bottleneck's cost: exact match per organism and task under each self-conditioning mode
   (continuous, argmax, the paper's ``topk:8`` and ``topp:0.03``, sample, none) on the same
   prompts and seeds, with 95% Wilson intervals, the paired cost against the continuous run
   (mean per-prompt difference with a bootstrap 95% CI) and how often each mode's outputs equal the
   continuous run's. The dynamics gate checks the cost of the paper's bottleneck under an
   alternative sampler setting.

Writes ``metrics.json``, ``depth_table.md`` and figures (PNG + SVG) to ``out_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinterp import studies
from diffinterp.core.bottleneck import PAPER_TOPK, PAPER_TOPP
from diffinterp.core.loading import bundled_models
from diffinterp.depth import accounting as da
from diffinterp.figures.transparency import accuracy_per_mode, depth_per_step
from diffinterp.organisms.catalog import ORGANISMS
from diffinterp.organisms.twin import bundled_ar_path
from diffinterp.stats import mean_ci, proportion_of
from diffinterp.studies.gate import alternative_kwargs, measure_gate

PAPER_MODE = f"topk:{PAPER_TOPK}"
DEFAULT_MODES = ("continuous", "argmax", PAPER_MODE, f"topp:{PAPER_TOPP:g}", "sample", "none")


def _flags(hm, prompts, mode: str, seed: int, gen_kwargs: dict) -> tuple[list[bool], list[str], list, float]:
    batches = list(studies.run_prompt_set(hm, prompts, seed=seed, **{**gen_kwargs, "bottleneck": mode}))
    flags = [bool(f) for b in batches for f in (b.correct.tolist() if b.correct is not None else [])]
    outputs = [p for b in batches for p in b.predictions]
    steps = [float(s) for b in batches for s in (b.trajectory.stack("active").sum(0) if b.trajectory else [])]
    return flags, outputs, batches, sum(steps) / max(1, len(steps))


def bottleneck_accuracy(hm, prompts, modes=DEFAULT_MODES, *, seed: int = 0, **gen_kwargs) -> dict[str, Any]:
    """Per mode: accuracy (Wilson 95% CI), the paired cost against the first mode (bootstrap 95% CI
    of the per-prompt difference), mean steps and agreement of the outputs with the first mode's."""
    results, reference, batches = {}, None, None
    for mode in modes:
        flags, outputs, runs, steps = _flags(hm, prompts, mode, seed, gen_kwargs)
        if reference is None:
            reference, batches = (flags, outputs), runs
        entry = {"mean_steps_per_canvas": steps}
        entry["agreement_with_continuous"] = proportion_of([a == b for a, b in zip(outputs, reference[1], strict=True)])
        if flags:
            entry["accuracy"] = proportion_of(flags)
            entry["cost_vs_continuous"] = mean_ci([int(b) - int(a) for a, b in zip(reference[0], flags, strict=True)],
                                                  seed=seed)  # fmt: skip
        results[mode] = entry
    return {"modes": results, "_batches": batches}


def depth_part(config: str, step_counts: list[int], max_steps: int):
    """The depth table, the chains per step for the figure, and the Markdown table."""
    ar_path = None if config in ("real", "tiny") else bundled_ar_path()  # a folder config: the bundled twin
    rows, details = da.depth_table(config, step_counts, ar_path=ar_path, trace_steps=4)
    chains = {
        key: [da.chain_depth(depths, s) for s in range(1, max_steps + 1)]
        for key, depths in details["traced_step_depths"].items()
    }
    return rows, details, chains


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
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Run both parts on ``model`` (default: every bundled organism); write metrics and figures."""
    import diffinterp as di

    n = min(n, 24) if quick else n
    if model is None:
        models = [(name, di.load_model(name)) for name in bundled_models() if name in ORGANISMS and name != "toy4"]
    else:
        models = [(None, model)]
    accuracy, gates, steps = {}, {}, []
    with studies.StudyOutput(out_dir) as out:
        for name, hm in models:
            for task in tasks or studies.model_tasks(hm) or (studies.RANDOM_TASK,):
                key = task if name is None else f"{name}/{task}"
                prompts = studies.prompt_set(hm, task, n, seed=seed)
                found = bottleneck_accuracy(hm, prompts, modes, seed=seed, **gen_kwargs)
                batches = found.pop("_batches")
                accuracy[key] = found["modes"]
                steps.append(found["modes"][modes[0]]["mean_steps_per_canvas"])
                alternative = bottleneck_accuracy(
                    hm, prompts, (modes[0], PAPER_MODE), seed=seed, **alternative_kwargs(gen_kwargs)
                )["modes"]
                gates[key] = measure_gate(
                    hm,
                    batches,
                    seed=seed,
                    finding=found["modes"].get(PAPER_MODE, {}).get("cost_vs_continuous"),
                    alternative_finding=alternative[PAPER_MODE].get("cost_vs_continuous"),
                    finding_name=f"accuracy cost of the {PAPER_MODE} bottleneck",
                    **gen_kwargs,
                )
        mean_steps = sum(steps) / len(steps)
        step_counts = [max_steps, max(1, round(mean_steps))]
        rows, details, chains = depth_part(config, step_counts, max_steps)
        out.figure(depth_per_step(chains, details["ar_depth"], max_steps), "depth_per_step")
        out.figure(accuracy_per_mode(accuracy), "accuracy_per_mode")
        table = da.format_table(rows)
        out.file("depth_table.md").write_text(table + "\n")
        summary = {}
        for key, per_mode in accuracy.items():
            for mode, entry in per_mode.items():
                if "accuracy" in entry:
                    summary[f"{key}_{mode}_accuracy"] = entry["accuracy"]["value"]
            summary[f"{key}_gate"] = gates[key]["verdict"]
        out.metrics.update(
            summary=summary,
            config=config,
            mean_steps_per_canvas=mean_steps,
            step_counts=step_counts,
            depth_rows=[row.__dict__ for row in rows],
            depth_details=details,
            bottleneck_accuracy=accuracy,
            gate=gates,
            n=n,
            options={"seed": seed, "quick": quick, "modes": list(modes), **studies.generation_options(gen_kwargs)},
        )
    return out.metrics
