"""Monitorability: can monitors that read DiffusionGemma's visible outputs predict a hidden property,
and as well as they can from the AR twin's ("Gemma 4") outputs?

    from case_studies import monitorability
    metrics = monitorability.run(out_dir="out/monitorability")        # the hint organism

Default: the ``hint`` organism (``diffinterp.organisms.families.hint``), in the style of the
intervention archetype of Guan et al. 2025: a digit sum written answer first (``= T : s1 .. sn``,
the running sums as scratchpad) whose prompt carries, half the time, a hint that *always* changes
the answer. The label (``hint`` / ``none``) is known exactly; a monitor sees only the output. On the
``toy4`` model the task is ``mon`` (a hidden rule that shows in the output's first word).

Monitors (``diffinterp.phenomena.monitors``): a learned one-token rule and L2 logistic regressions
on bag-of-token (+ position) features, trained on the outputs for train-split prompts and evaluated
on the held-out test prompts; for ``sum`` a consistency rule (the answer disagrees with the
scratchpad's last value: the visible trace of a hint), for ``mon`` a keyword rule, "digits only"
variants and an order rule that also reads the prompt. Sources: the diffusion model's final canvas,
its argmax draft at each denoising step, and the AR twin's greedy output. On a model diffinterp
does not know the prompts are seeded random ones with labels ``a``/``b`` and the AR part and the
task-specific monitors are skipped (noted in ``metrics["notes"]``). The dynamics gate
(:mod:`diffinterp.phenomena.gate`) checks the main monitor's AUROC under an alternative sampler.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch

from diffinterp.figures import monitors as MF
from diffinterp.organisms.catalog import organism_of
from diffinterp.organisms.catalog import task as catalog_task
from diffinterp.phenomena import monitors as M
from diffinterp.records.decoding import output_tokens, special_ids
from diffinterp.stats import proportion_of
from diffinterp.studies.gate import alternative_kwargs, measure_gate
from diffinterp.studies.output import StudyOutput
from diffinterp.studies.prompts import PromptSet, model_tasks, prompt_set, random_prompt_set
from diffinterp.studies.runs import generation_options, model_info, run_prompt_set

ORGANISM = "hint"
#: Per task: the positive label, the words that spell the rule in the output (removed by the
#: "digits only" variants), and whether the answer-first consistency rule applies.
SETTINGS = {
    "sum": {"positive": "hint", "rule_words": (), "consistency": True},
    "mon": {"positive": "rev", "rule_words": ("rev", "keep"), "consistency": False},
}
MAIN = "logistic (bag+position)"
PAPER_CLAIM = "monitorability of DiffusionGemma's outputs: similar to Gemma 4 (Engels et al. 2026)"
STEP_MONITORS = ("consistency rule", "keyword rule (rev)", "learned token rule", "logistic (bag)", MAIN)
SUMMARY_MONITORS = (
    "consistency rule",
    "keyword rule (rev)",
    "learned token rule",
    MAIN,
    "digits only: logistic (bag+position)",
)


def monitored_task(hm) -> str | None:
    """The model's task with a hidden property a monitor can be asked about (``None``: none known)."""
    return next((t for t in model_tasks(hm) if t in SETTINGS), None)


def train_prompt_set(hm, n: int, *, seed: int, exclude: PromptSet, task: str | None) -> PromptSet:
    """``n`` distinct monitor-training prompts: the task's train split, or random prompts of another
    seed (minus any equal to a prompt of ``exclude``, the test set)."""
    if task is not None:
        rng, examples, seen = random.Random(f"diffinterp-monitor-train-{seed}"), [], set()
        for _ in range(100 * n):
            example = catalog_task(task).sample(rng, split="train")
            if example.prompt not in seen:
                seen.add(example.prompt)
                examples.append(example)
            if len(examples) == n:
                break
        ids, mask = hm.to_tokens([e.prompt for e in examples])
        labels = [catalog_task(task).hidden_property(e) for e in examples]
        return PromptSet(task, ids, mask, [e.prompt for e in examples], [e.answer for e in examples], labels)
    taken = set(map(tuple, prompt_contents(exclude)))
    ps = random_prompt_set(hm.config.text_config.vocab_size, n, seed=seed + 7919, device=hm.model.device)
    return ps.subset([i for i, row in enumerate(prompt_contents(ps)) if tuple(row) not in taken])


def prompt_contents(ps: PromptSet) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(ps.input_ids, ps.attention_mask, strict=True)]


def diffusion_outputs(hm, ps: PromptSet, *, seed: int, batch_size: int, batches: list | None = None, **gen_kwargs):
    """Final outputs ``[row]``, drafts ``[step][row]`` (block 0, carried forward) and exact match (or
    None); ``batches`` (a list) receives the runs."""
    eos, pad = special_ids(hm)
    finals, drafts, correct = [], [], []
    for batch in run_prompt_set(hm, ps, seed=seed, batch_size=batch_size, **gen_kwargs):
        if batches is not None:
            batches.append(batch)
        traj = batch.trajectory
        finals += [output_tokens(row, eos, pad) for row in traj.sequences[:, traj.prompt_len :]]
        drafts.append(M.carry_forward(traj.stack("argmax"), traj.stack("active")))
        correct = None if batch.correct is None else correct + batch.correct.tolist()
    steps = max(d.shape[0] for d in drafts)
    stacked = torch.cat([M.carry_forward(d, torch.ones(d.shape[:2], dtype=torch.bool), steps) for d in drafts], 1)
    return finals, M.draft_outputs(stacked, eos, pad), correct


def ar_outputs(hm, ps: PromptSet, twin) -> tuple[list[list[int]], list[bool]]:
    """The AR twin's greedy outputs as token ids, and their exact match."""
    from diffinterp.organisms.task import Example

    texts = twin.complete(ps.texts)
    ids = [hm.tokenizer.convert_tokens_to_ids(text.split()) for text in texts]
    judge = catalog_task(ps.task)
    examples = [Example(ps.task, t, a) for t, a in zip(ps.texts, ps.answers, strict=True)]
    return ids, [judge.accepts(t, e) for t, e in zip(texts, examples, strict=True)]


def fit_monitors(
    outputs, y, *, toy_ids: dict | None, positions: int, tokenizer=None, settings: dict | None = None
) -> dict[str, Any]:
    """Monitor name -> ``score(outputs, prompts)``; trained monitors are fitted on ``(outputs, y)``.

    ``toy_ids`` (rule words, ``=``, ``:`` and the task tag -> id) with the task's ``settings`` adds
    the task's rule monitors (keyword rule and hidden-word variants, or the consistency rule);
    ``tokenizer`` (optional) only makes the reported features readable.
    """
    name = (lambda t: tokenizer.convert_ids_to_tokens(int(t))) if tokenizer is not None else str
    token_rule = M.TokenRuleMonitor().fit(outputs, y)
    bag = M.LogisticMonitor(positions=0).fit(outputs, y)
    bag_pos = M.LogisticMonitor(positions=positions).fit(outputs, y)
    found = {"learned token rule": lambda o, p: token_rule.score(o), "logistic (bag)": lambda o, p: bag.score(o)}
    found[MAIN] = lambda o, p: bag_pos.score(o)
    details = {"learned_token": token_rule.token, "logistic_top_features": bag_pos.top_features(token_name=name)}
    if token_rule.token is not None:
        details["learned_token"] = {"token": name(token_rule.token), "direction": token_rule.direction}
    if toy_ids is not None and settings and settings["consistency"]:
        consistency = M.ConsistencyMonitor(toy_ids["="], toy_ids[":"])
        found = {"consistency rule": lambda o, p: consistency.score(o), **found}
    if toy_ids is not None and settings and settings["rule_words"]:
        words = [toy_ids[w] for w in settings["rule_words"]]
        positive = toy_ids[settings["positive"]]
        special = frozenset(tokenizer.all_special_ids) if tokenizer is not None else frozenset()
        hidden = M.hide_tokens(outputs, words)
        keyword, order = M.KeywordMonitor(positive), M.OrderMonitor(frozenset(toy_ids.values()) | special)
        digits_rule = M.TokenRuleMonitor().fit(hidden, y)
        digits_bag = M.LogisticMonitor(positions=positions).fit(hidden, y)
        found = {"keyword rule (rev)": lambda o, p: keyword.score(o), **found}
        found["digits only: learned token rule"] = lambda o, p: digits_rule.score(M.hide_tokens(o, words))
        found["digits only: logistic (bag+position)"] = lambda o, p: digits_bag.score(M.hide_tokens(o, words))
        found["digits + prompt: order rule"] = lambda o, p: order.score(o, p)
        details["digits_only_logistic_top_features"] = digits_bag.top_features(token_name=name)
    return {"score": found, "details": details}


def evaluate(fitted, outputs, prompts, y, *, names=None, seed: int, resamples: int) -> tuple[dict, dict]:
    """AUROC CIs and raw scores of each monitor in ``fitted`` (or only ``names``) on ``outputs``."""
    scores = {k: f(outputs, prompts) for k, f in fitted["score"].items() if names is None or k in names}
    return {k: M.auroc_or_none(s, y, seed=seed, resamples=resamples) for k, s in scores.items()}, scores


def _twin(hm):
    """The AR twin of the model's organism, or ``None``."""
    from diffinterp.organisms.twin import load_ar_baseline

    spec = organism_of(hm)
    try:
        return load_ar_baseline(spec.name) if spec is not None else None
    except (FileNotFoundError, ValueError):
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _by_label(flags, labels, positive) -> dict[str, dict]:
    """Exact match within each class of the hidden label (a monitor reading errors shows here)."""
    flags, labels = [bool(f) for f in flags], [int(y) for y in labels]
    return {
        str(positive): proportion_of([f for f, y in zip(flags, labels, strict=True) if y == 1]),
        "other": proportion_of([f for f, y in zip(flags, labels, strict=True) if y == 0]),
    }


def headline(test, train, positive, accuracy, auroc, per_step, comparison, n_steps) -> dict[str, Any]:
    """The flat ``summary``: accuracies, AUROCs of the main monitors per source, step 0, the paired difference."""
    value = lambda ci: None if ci is None else ci.get("value")  # noqa: E731
    summary = {
        "n_test": len(test),
        "n_train": len(train),
        "positive_label": str(positive),
        "accuracy_diffusion": value(accuracy["diffusion"]),
        "accuracy_ar": value(accuracy["ar"]),
    }
    for source in ("diffusion final", "AR twin"):
        for monitor in SUMMARY_MONITORS:
            if monitor in auroc.get(source, {}):
                summary[f"auroc_{_slug(source)}__{_slug(monitor)}"] = value(auroc[source][monitor])
    for monitor, cis in per_step.items():
        summary[f"auroc_draft_step0__{_slug(monitor)}"] = value(cis[0] if cis else None)
    summary["draft_steps"] = n_steps
    diff = comparison.get(MAIN)
    if diff is not None:
        summary.update(
            auroc_diffusion_minus_ar=diff["value"],
            auroc_diffusion_minus_ar_ci_low=diff["ci_low"],
            auroc_diffusion_minus_ar_ci_high=diff["ci_high"],
        )
    summary["paper_claim"] = PAPER_CLAIM
    return summary


def run(
    model=None,
    *,
    n: int = 100,
    out_dir: str | Path = "out/monitorability",
    seed: int = 0,
    quick: bool = False,
    n_train: int | None = None,
    batch_size: int = 64,
    resamples: int | None = None,
    ar: bool = True,
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Train monitors on train-split outputs, evaluate them on ``n`` test prompts' outputs of the
    diffusion model (final and per-step drafts) and of the AR twin; write metrics and figures."""
    import diffinterp as di

    hm = model if model is not None else di.load_model(ORGANISM)
    n = min(n, 48) if quick else n
    n_train = n_train or (100 if quick else 200)
    resamples = resamples or (500 if quick else 2000)
    task = monitored_task(hm)
    settings = SETTINGS.get(task)
    notes = []
    test = prompt_set(hm, task or "random", n, seed=seed)
    train = train_prompt_set(hm, n_train, seed=seed, exclude=test, task=task)
    y_test, positive = M.binary_labels(test.labels, settings["positive"] if settings else None)
    y_train, _ = M.binary_labels(train.labels, positive)
    toy_ids = None
    if settings is not None:
        words = (*settings["rule_words"], "=", ":", task)
        toy_ids = {w: hm.tokenizer.convert_tokens_to_ids(w) for w in words}
    else:
        notes.append("no known task with a hidden property: random prompts, labels a/b; task monitors skipped")
    test_prompts = prompt_contents(test)
    run_args = dict(batch_size=batch_size, **gen_kwargs)
    batches: list = []
    final, drafts, correct = diffusion_outputs(hm, test, seed=seed, batches=batches, **run_args)
    train_final, _, _ = diffusion_outputs(hm, train, seed=seed + 100_003, **run_args)
    fit = dict(toy_ids=toy_ids, positions=hm.config.canvas_length, tokenizer=hm.tokenizer, settings=settings)
    fitted = fit_monitors(train_final, y_train, **fit)
    auroc, scores = {}, {}
    auroc["diffusion final"], scores["diffusion final"] = evaluate(
        fitted, final, test_prompts, y_test, seed=seed, resamples=resamples
    )
    accuracy = {"diffusion": proportion_of(correct) if correct is not None else None, "ar": None}
    if correct is not None:
        accuracy["diffusion_by_label"] = _by_label(correct, y_test, positive)
    details = {"trained on diffusion finals": fitted["details"]}
    twin = _twin(hm) if task is not None and ar else None
    if twin is not None:
        ar_test, ar_correct = ar_outputs(hm, test, twin)
        ar_train, _ = ar_outputs(hm, train, twin)
        fitted_ar = fit_monitors(ar_train, y_train, **fit)
        auroc["AR twin"], scores["AR twin"] = evaluate(
            fitted_ar, ar_test, test_prompts, y_test, seed=seed, resamples=resamples
        )
        auroc["AR twin (diffusion-trained)"] = evaluate(
            fitted, ar_test, test_prompts, y_test, seed=seed, resamples=resamples
        )[0]
        accuracy["ar"] = proportion_of(ar_correct)
        accuracy["ar_by_label"] = _by_label(ar_correct, y_test, positive)
        details["trained on AR outputs"] = fitted_ar["details"]
    else:
        notes.append("AR part off (ar=False)" if not ar else "no AR twin for this model: AR comparison skipped")
    alt_final, _, _ = diffusion_outputs(hm, test, seed=seed, **alternative_kwargs(run_args))
    gate = measure_gate(
        hm,
        batches,
        seed=seed,
        finding=auroc["diffusion final"].get(MAIN),
        alternative_finding=evaluate(
            fitted, alt_final, test_prompts, y_test, names=[MAIN], seed=seed, resamples=resamples
        )[0].get(MAIN),  # fmt: skip
        finding_name=f"AUROC of the {MAIN} monitor on the final outputs",
        **gen_kwargs,
    )
    per_step = {name: [] for name in STEP_MONITORS if name in fitted["score"]}
    for outputs in drafts:
        step = evaluate(fitted, outputs, test_prompts, y_test, names=per_step, seed=seed, resamples=resamples // 2)[0]
        for name in per_step:
            per_step[name].append(step[name])
    comparison = {
        name: M.paired_auroc_difference(scores["diffusion final"][name], s, y_test, seed=seed, resamples=resamples)
        for name, s in scores.get("AR twin", {}).items()
    }
    summary = headline(test, train, positive, accuracy, auroc, per_step, comparison, len(drafts))
    with StudyOutput(out_dir) as out:
        out.figure(MF.auroc_bars(auroc), "auroc_by_source")
        out.figure(MF.auroc_per_step(per_step, auroc["diffusion final"]), "auroc_per_step")
        if 0 < y_test.sum() < y_test.size:
            shown = [
                k
                for k in ("consistency rule", "keyword rule (rev)", MAIN, "digits only: logistic (bag+position)")
                if k in fitted["score"]
            ]
            curves = {k: {s: M.roc_curve(scores[s][k], y_test) for s in scores} for k in shown}
            out.figure(MF.roc_figure(curves), "roc_curves")
        out.metrics.update(
            summary={**summary, "gate": gate["verdict"], "task": task},
            gate=gate,
            auroc=auroc,
            auroc_per_draft_step=per_step,
            auroc_difference_diffusion_minus_ar=comparison,
            accuracy=accuracy,
            monitor_details=details,
            notes=notes,
            n=len(test),
            model=model_info(hm),
            options={"n": n, "n_train": n_train, "seed": seed, "quick": quick, "batch_size": batch_size, "resamples": resamples,
                     "ar": ar, "generation": generation_options(gen_kwargs),
                     "training": "each source's monitors fitted on that source's outputs for the training prompts; "
                     "'(diffusion-trained)' rows and the draft steps use the monitors fitted on diffusion final outputs"},
        )  # fmt: skip
    return out.metrics
