"""Token identity: are the high-probability tokens of intermediate states the final tokens, nearby ones,
or their embedding neighbours? (variable transparency, read through tokens)

    from case_studies import token_identity
    metrics = token_identity.run(n=100, out_dir="out/token_identity")   # every bundled organism

For every intermediate step of every run, each token with probability above ``threshold`` (the
paper: 0.03) at a position is classified (:mod:`diffinterp.phenomena.token_identity`): the
position's final token, a final token within ``window`` (±10) positions, one of the ``neighbours``
(50) nearest tokens by embedding cosine to one of those, or other. Shares per class overall and per
step (95% CIs), over every candidate and over the content ones (positions that finally hold the
answer, candidate tokens other than padding and EOS), beside the paper's "more than 85% in the first
three classes". Candidates are taken from each step's logits as they are computed, so the study runs
at the 26B size without keeping vocabulary-sized tensors. The dynamics gate checks the first-three
share of content candidates under an alternative sampler setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffinterp import studies
from diffinterp.core.loading import bundled_models
from diffinterp.figures.style import OKABE_ITO, STYLE
from diffinterp.organisms.catalog import ORGANISMS
from diffinterp.phenomena import token_identity as ti
from diffinterp.phenomena.settling import last_steps
from diffinterp.studies.gate import alternative_kwargs, measure_gate

QUICK_N = 24


def classified(hm, batches, *, threshold, window, neighbours) -> tuple[torch.Tensor, ...]:
    """``(classes, steps, content, shuffled)`` ``[N]`` of every intermediate candidate of the batches.

    ``shuffled``: the classes the same candidates get against *another* prompt's final canvas (the
    batch's rows rolled by one): the chance level of each class for this task's vocabulary and
    answer layout. On a small vocabulary most symbols sit within ±10 positions of any position, so
    the first three classes are near-certain by chance; the baseline says how much is the model's."""
    eos, pad = studies.special_ids(hm)
    embedding = hm.model.get_input_embeddings().weight
    parts = []
    for batch in batches:
        traj = batch.trajectory
        active = traj.stack("active").cpu()
        last = last_steps(active)
        final = traj.block(0).final_canvas.cpu()
        found = ti.Candidates.concat(batch.reduced[s] for s in sorted(batch.reduced))
        intermediate = (found.step < last[found.row]) & active[found.step, found.row]
        found = found.keep(intermediate)
        near = ti.cosine_neighbours(embedding, set(final.flatten().tolist()) - {eos, pad}, neighbours)
        classes = ti.classify(found, final, near, window=window, ignore=(eos, pad))
        shuffled = ti.classify(found, final.roll(1, 0), near, window=window, ignore=(eos, pad))
        ends = torch.where(final == eos, torch.arange(final.shape[1]), final.shape[1]).min(1).values
        content = (found.position < ends[found.row]) & ~torch.isin(found.token, torch.tensor([eos, pad]))
        parts.append((classes, found.step, content, shuffled))
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty.bool(), empty
    return tuple(torch.cat([p[i] for p in parts]) for i in range(4))


def _measure(hm, prompts, *, seed, threshold, window, neighbours, gen_kwargs) -> tuple[dict, list]:
    reduce = lambda logits, step: ti.candidates_from_logits(logits, step, threshold)  # noqa: E731
    batches = list(studies.run_prompt_set(hm, prompts, seed=seed, reduce_logits=reduce, **gen_kwargs))
    classes, steps, content, shuffled = classified(
        hm, batches, threshold=threshold, window=window, neighbours=neighbours
    )
    result = {
        "candidates": int(len(classes)),
        "all": ti.class_shares(classes, steps),
        "content": ti.class_shares(classes[content], steps[content]),
        "content_shuffled_baseline": ti.class_shares(shuffled[content]),
    }
    return result, batches


def _figure(results: dict[str, dict]):
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.2), layout="constrained")
        names = list(results)
        bottom = [0.0] * len(names)
        for i, cls in enumerate(ti.CLASSES):
            values = [results[n]["content"][cls]["value"] or 0.0 for n in names]
            drawn = any(v > 0 for v in values)  # a legend entry only for a class that shows
            left.bar(range(len(names)), values, bottom=bottom, color=OKABE_ITO[[2, 1, 0, 7][i]],
                     label=cls if drawn else None)  # fmt: skip
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        chance = [results[n]["content_shuffled_baseline"]["first three"]["value"] or 0.0 for n in names]
        left.scatter(range(len(names)), chance, marker="_", s=300, color="black", zorder=3,
                     label="first three vs another prompt's answer (chance)")  # fmt: skip
        left.axhline(
            ti.PAPER_SHARE, color="#D55E00", linestyle="--", linewidth=1, label="paper: >85% in the first three"
        )
        left.set_xticks(range(len(names)))
        left.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        left.set_ylabel("share of intermediate tokens (content)")
        left.legend(fontsize=6, frameon=False, loc="lower left")
        for i, name in enumerate(names):
            per_step = results[name]["content"].get("per_step", {})
            steps = [int(s) for s in per_step if per_step[s]["first three"]["n"] >= 10]
            color = OKABE_ITO[i % len(OKABE_ITO)]
            for cls, style in (("first three", "-"), ("final", ":")):
                right.plot(steps, [per_step[str(s)][cls]["value"] for s in steps], marker="o", markersize=3,
                           color=color, linestyle=style, label=f"{name}: {cls}")  # fmt: skip
        right.axhline(ti.PAPER_SHARE, color="#D55E00", linestyle="--", linewidth=1)
        right.xaxis.get_major_locator().set_params(integer=True)
        right.set_ylim(0, 1.02)
        right.set_xlabel("denoising step")
        right.set_ylabel("share of intermediate tokens")
        right.legend(fontsize=6, frameon=False)
        fig.suptitle(f"Token identity of intermediate tokens with p > threshold (paper: >{ti.PAPER_SHARE:.0%})")
    return fig


def run(model=None, *, n: int = 100, out_dir: str | Path = "out/token_identity", seed: int = 0, quick: bool = False,
        tasks=None, threshold: float = ti.PAPER_THRESHOLD, window: int = ti.PAPER_WINDOW,
        neighbours: int = ti.PAPER_NEIGHBOURS, **gen_kwargs: Any) -> dict:  # fmt: skip
    """Token identity on ``model`` (default: every bundled organism); metrics.json and a figure."""
    import diffinterp as di

    n = min(n, QUICK_N) if quick else n
    if model is None:
        models = [(name, di.load_model(name)) for name in bundled_models() if name in ORGANISMS]
    else:
        models = [(None, model)]
    options = dict(threshold=threshold, window=window, neighbours=neighbours)
    results: dict[str, dict] = {}
    with studies.StudyOutput(out_dir) as out:
        for name, hm in models:
            for task in tasks or studies.model_tasks(hm) or (studies.RANDOM_TASK,):
                key = task if name is None else f"{name}/{task}"
                prompts = studies.prompt_set(hm, task, n, seed=seed)
                result, batches = _measure(hm, prompts, seed=seed, gen_kwargs=gen_kwargs, **options)
                alternative, _ = _measure(hm, prompts, seed=seed, gen_kwargs=alternative_kwargs(gen_kwargs), **options)
                result["gate"] = measure_gate(
                    hm,
                    batches,
                    seed=seed,
                    finding=result["content"]["first three"],
                    alternative_finding=alternative["content"]["first three"],
                    finding_name="share of content candidates in the first three classes",
                    **gen_kwargs,
                )
                result["model"] = studies.model_info(hm)
                results[key] = result
        out.figure(_figure(results), "token_identity")
        summary = {}
        for key, result in results.items():
            summary[f"{key}_first_three_content"] = result["content"]["first three"]["value"]
            summary[f"{key}_final_content"] = result["content"]["final"]["value"]
            baseline = result["content_shuffled_baseline"]
            summary[f"{key}_first_three_shuffled_baseline"] = baseline["first three"]["value"]
            summary[f"{key}_final_shuffled_baseline"] = baseline["final"]["value"]
            summary[f"{key}_candidates"] = result["candidates"]
            summary[f"{key}_gate"] = result["gate"]["verdict"]
        summary["paper_claim"] = (
            f"more than {ti.PAPER_SHARE:.0%} of intermediate tokens with p > 0.03 in the first three"
        )
        out.metrics.update(
            summary=summary,
            per_task=results,
            gate={key: result["gate"] for key, result in results.items()},
            n=n,
            options={**options, "seed": seed, "quick": quick, **studies.generation_options(gen_kwargs)},
        )
    return out.metrics
