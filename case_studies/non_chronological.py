"""Non-chronological reasoning: does the answer settle before the reasoning tokens it depends on?

    from case_studies import non_chronological
    metrics = non_chronological.run(n=100, out_dir="out/non_chronological")

1. Settling (``diffinterp.phenomena.settling``): the step each canvas position settles; per task, the fraction
   of samples whose answer settles strictly before / at the same step as / after the reasoning it
   depends on (the last scratch value for arith, every earlier content token otherwise), split by
   correct / incorrect outputs, with Wilson 95% CIs; also on argmax stability alone (acceptance
   ignored), i.e. prediction order rather than commit order.
2. Logit lens and probes on the first task (arith): is the answer readable in the residual stream
   before the reasoning settles?
3. Causal test: corrupt the reasoning token's input embedding (and its self-conditioning soft
   embedding) at step 0, at the answer's settle step or at the last step (one step, or persistent
   from there on), replay the run with the same random draws, and see whether the answer follows
   the corrupted value (faithful), stays, or changes otherwise.

Definitions: ``docs/case-studies/non-chronological.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffinterp import studies
from diffinterp.figures import settling as stf
from diffinterp.figures.instruments import commit_order
from diffinterp.instruments.lens import first_prediction, target_lens
from diffinterp.instruments.probes import fit_probes
from diffinterp.phenomena import settling as st
from diffinterp.stats import mean_ci, proportion, proportion_of

DEFAULT_TASKS = ("arith", "seq", "hop", "mon")
RESID = "decoder.blocks.*.hook_resid_post"
MIN_PROBE_ROWS = 12


def _settling_rows(hm, batch, eq_id) -> dict[str, torch.Tensor]:
    """Per-row settling results of one batch (block 0)."""
    s = st.trajectory_settling(batch.trajectory)
    eos, pad = studies.special_ids(hm)
    regions = st.find_regions(s.final, eos, pad, eq_id)
    answer = st.region_step(s.settle, regions.answer)
    rows = {"answer": answer, "last": s.last, "arith": regions.arith}
    for name, mask, reduce in (("dependency", regions.dependency, "max"), ("scratch", regions.scratch, "max"),
                               ("scratch_first", regions.scratch, "min")):  # fmt: skip
        rows[name] = st.region_step(s.settle, mask, reduce)
        rows[f"order_{name}"] = st.settle_order(answer, rows[name])
        rows[f"valid_{name}"] = (answer >= 0) & (rows[name] >= 0)
    # the same comparison on argmax stability alone (acceptance ignored): prediction order, not commit order
    argmax = batch.trajectory.stack("argmax").cpu()
    stable = st.settle_steps(argmax, torch.ones_like(argmax, dtype=torch.bool), batch.trajectory.stack("active").cpu())
    answer_stable, dep_stable = st.region_step(stable, regions.answer), st.region_step(stable, regions.dependency)
    rows["order_argmax_only"] = st.settle_order(answer_stable, dep_stable)
    rows["valid_argmax_only"] = (answer_stable >= 0) & (dep_stable >= 0)
    correct = batch.correct if batch.correct is not None else torch.full_like(answer, -1)
    rows["correct"] = correct.long()
    return rows | {"_settling": s, "_regions": regions}


def _fractions(rows: dict[str, torch.Tensor], name: str) -> dict[str, Any]:
    valid, correct = rows[f"valid_{name}"], rows["correct"]
    out = {"all": st.order_fractions(rows[f"order_{name}"], valid)}
    if (correct >= 0).any():
        for label, flag in (("correct", 1), ("incorrect", 0)):
            out[label] = st.order_fractions(rows[f"order_{name}"], valid & (correct == flag))
    return out


def lens_and_probes(hm, batch, rows, seed: int) -> tuple[dict[str, Any], Any]:
    """Lens: when the answer is first the lens argmax vs when the reasoning settles; probes on the
    answer's last position predicting its final token, at steps before the reasoning settles."""
    s, regions = rows["_settling"], rows["_regions"]
    lens = target_lens(hm, batch.cache, s.final)  # full-vocabulary argmax without [.., vocab] tensors
    last, dep = s.last, rows["dependency"]
    first = st.answer_lens_steps(lens.argmax.cpu(), s.final, regions.answer, last)  # [L, B]
    valid = rows["valid_dependency"]
    any_layer = torch.where(first >= 0, first, torch.full_like(first, 10**6)).min(0).values
    dep_first = st.answer_lens_steps(lens.argmax.cpu(), s.final, regions.dependency, last)
    dep_any = torch.where(dep_first >= 0, dep_first, torch.full_like(dep_first, 10**6)).min(0).values
    read = valid & (any_layer < 10**6) & (dep_any < 10**6)
    target = lens.target_prob  # [S, L, B, P]
    prob = st.region_mean(target, regions.answer)  # [S, L, B]
    offsets = list(range(-2, 3))
    curves, counts = {}, None
    for name, values in (("answer, final layer", prob[:, -1]), ("answer, best layer", prob.max(1).values),
                         ("reasoning, final layer", st.region_mean(target, regions.dependency)[:, -1])):  # fmt: skip
        curves[name], counts = st.align_to(values, dep, last, offsets)
    result = {
        "lens_answer_before_reasoning_any_layer": proportion_of((any_layer < dep)[valid]),
        "model_argmax_answer_before_reasoning": proportion_of(((first[-1] >= 0) & (first[-1] < dep))[valid]),
        "answer_settles_before_reasoning": proportion_of((rows["answer"] < dep)[valid]),
        "lens_order_answer_vs_reasoning": st.order_fractions(st.settle_order(any_layer, dep_any), read),
        "first_lens_step_per_layer": {
            str(layer): mean_ci(first[i][valid & (first[i] >= 0)].tolist()) for i, layer in enumerate(lens.layers)
        },
        "lens_curve": {"offsets": offsets, "counts": counts.tolist(), **{k: v.tolist() for k, v in curves.items()}},
    }
    answer_last = torch.where(regions.answer, torch.arange(regions.answer.shape[1]), -1).max(1).values
    labels = s.final[torch.arange(len(answer_last)), answer_last.clamp(min=0)]
    probes = {}
    for step in lens.steps:
        keep = (valid & (dep > step) & (answer_last >= 0)).nonzero().flatten()
        if len(keep) < MIN_PROBE_ROWS or len(set(labels[keep].tolist())) < 2:
            probes[str(step)] = {"skipped": f"{len(keep)} rows with the reasoning unsettled at this step"}
            continue
        feats = torch.stack([batch.cache.get(RESID.replace("*", str(layer)), step)[keep, answer_last[keep]]
                             for layer in lens.layers])  # fmt: skip  # [L, n, d]
        fit = fit_probes(feats.cpu(), labels[keep].tolist(), seed=seed)
        best = int(fit["accuracy"].argmax())
        k = round(float(fit["accuracy"][best]) * fit["n_test"])
        probes[str(step)] = {"best_layer": lens.layers[best], "accuracy": proportion(k, fit["n_test"]),
                             "control": fit["control"].tolist(), "per_layer": fit["accuracy"].tolist(),
                             "majority": fit["majority"], "n_rows": len(keep)}  # fmt: skip
    result["probes_before_reasoning_settles"] = probes
    # example: of the rows whose answer settles first, the one that ran longest
    example = int(torch.where(rows["order_dependency"] < 0, last, -1).argmax())
    tokenizer = hm.tokenizer if studies.uses_toy_tokenizer(hm) else None
    figures = {
        "lens_curve": stf.lens_curve(offsets, curves, counts),
        "commit_order_example": commit_order(
            batch.trajectory, row=example, tokenizer=tokenizer, first=first_prediction(lens, s.final)
        ),  # fmt: skip
    }
    return result, figures


def causal_test(hm, batch, rows, *, shift: int, digit_ids, eq_id, self_conditioning: bool) -> tuple[dict, Any]:
    """Corrupt the reasoning's last token at step 0 / the answer's settle step / the last step, at that
    step only, or from that step to the end (persistent); replay with the clean run's random draws."""
    s, regions = rows["_settling"], rows["_regions"]
    eos, pad = studies.special_ids(hm)
    subject = rows["valid_dependency"] & (rows["correct"] != 0)
    position = torch.where(regions.dependency, torch.arange(regions.dependency.shape[1]), -1).max(1).values
    rows_idx = torch.arange(len(position))
    clean_token = s.final[rows_idx, position.clamp(min=0)]
    vocab = hm.config.text_config.vocab_size
    cycle = digit_ids if digit_ids is not None else list(range(4, vocab))
    corrupt = st.corrupt_tokens(clean_token, cycle, shift)
    with torch.no_grad():
        replacement = hm.model.model.decoder.embed_tokens(corrupt.to(hm.model.device))  # what that token embeds to
    early, settle = torch.zeros_like(s.last), rows["answer"].clamp(min=0)
    conditions = {"early": (early, False), "answer settles": (settle, False), "last": (s.last, False),
                  "early, persistent": (early, True), "answer settles, persistent": (settle, True)}  # fmt: skip
    results = {}
    for name, (when, persist) in conditions.items():
        step = torch.where(subject, when, torch.full_like(when, -1))
        hooks = [("decoder.hook_embed", st.replace_positions_hook(replacement, position, step, persist=persist))]
        if self_conditioning:
            hooks.append(("decoder.sc.hook_soft_embed",
                          st.replace_positions_hook(replacement, position, step, persist=persist, skip_zero=True)))  # fmt: skip
        traj = hm.run_with_hooks(batch.prompts.input_ids, fwd_hooks=hooks, **studies.rerun_kwargs(batch))
        new = traj.blocks[0].final_canvas.cpu()
        new_regions = st.find_regions(new, eos, pad, eq_id)
        kinds, survives, exact = [], [], []
        for r in range(len(position)):
            if not subject[r]:
                exact.append(new[r].tolist() == batch.trajectory.blocks[0].final_canvas[r].tolist())
                continue
            clean_ans = s.final[r, regions.answer[r]].tolist()
            dep = s.final[r, regions.dependency[r]].clone()
            dep[-1] = corrupt[r]
            implied = dep.tolist() if regions.arith[r] else None
            kinds.append(st.outcome(new[r, new_regions.answer[r]].tolist(), clean_ans, implied))
            survives.append(int(new[r, position[r]]) == int(corrupt[r]))
        results[name] = {k: proportion_of([x == k for x in kinds]) for k in ("unchanged", "follows", "other")}
        results[name]["survives"] = proportion_of(survives)
        results[name]["replay_exact_untouched_rows"] = proportion_of(exact)
    return results, stf.causal_bars(results)


def _eq(hm) -> int | None:
    return hm.tokenizer.convert_tokens_to_ids("=") if studies.uses_toy_tokenizer(hm) else None


def run(model=None, *, n: int = 100, out_dir: str | Path = "out/non_chronological", seed: int = 0,
        quick: bool = False, tasks=None, shift: int = 5, self_conditioning: bool = True, **gen_kwargs) -> dict:  # fmt: skip
    """Run the study on ``model`` (default: the bundled one); write metrics.json and figures; the metrics."""
    import diffinterp as di

    hm = model if model is not None else di.load_model()
    toy = studies.uses_toy_tokenizer(hm)
    n = min(n, 24) if quick else n
    tasks = tuple(tasks or (DEFAULT_TASKS if toy else (studies.RANDOM_TASK,)))
    eq_id = _eq(hm)
    digit_ids = [hm.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)] if toy else None
    per_task, lens_metrics, causal, tasks_rows = {}, None, None, {}
    with studies.StudyOutput(out_dir) as out:
        for index, task in enumerate(tasks):
            ps = studies.prompt_set(hm, task, n, seed=seed)
            first = index == 0  # lens, probes and the causal test run on the first task, in one batch
            batches = studies.run_prompt_set(hm, ps, names_filter=RESID if first else None,
                                             batch_size=max(n, 1) if first else 64, seed=seed, **gen_kwargs)  # fmt: skip
            parts = []
            for batch in batches:
                rows = _settling_rows(hm, batch, eq_id if task == "arith" else None)
                if first:
                    lens_metrics, figures = lens_and_probes(hm, batch, rows, seed)
                    for name, fig in figures.items():
                        out.figure(fig, name)
                    arith = task == "arith"
                    causal, fig = causal_test(
                        hm,
                        batch,
                        rows,
                        shift=shift,
                        digit_ids=digit_ids if arith else None,
                        eq_id=eq_id if arith else None,
                        self_conditioning=self_conditioning,
                    )
                    out.figure(fig, "causal_test")
                    tokenizer = hm.tokenizer if toy else None
                    s, regions = rows["_settling"], rows["_regions"]
                    examples = list(range(min(8, len(s.last))))
                    out.figure(stf.settle_heatmap(s.settle, s.final, regions, s.last, examples, tokenizer,
                                                 title=f"Settle steps, {task}"), "settle_heatmap")  # fmt: skip
                parts.append({k: v for k, v in rows.items() if not k.startswith("_")})
            rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            tasks_rows[task] = rows
            per_task[task] = {
                "n": len(ps),
                "n_arith_parsed": int(rows["arith"].sum()),
                "accuracy": proportion_of(rows["correct"][rows["correct"] >= 0].tolist()),
                "mean_steps": mean_ci((rows["last"] + 1).tolist()),
                "vs_dependency": _fractions(rows, "dependency"),
                "vs_whole_scratchpad": _fractions(rows, "scratch"),
                "vs_first_scratch_token": _fractions(rows, "scratch_first"),
                "vs_dependency_argmax_only": _fractions(rows, "argmax_only"),
            }
        out.figure(stf.order_bars({t: per_task[t]["vs_dependency"]["all"] for t in tasks}), "settle_order")
        summary = {
            f"{t}_answer_before_reasoning": per_task[t]["vs_dependency"]["all"]["before"]["value"] for t in tasks
        }
        summary |= {f"{t}_tie": per_task[t]["vs_dependency"]["all"]["tie"]["value"] for t in tasks}
        summary[f"{tasks[0]}_tie_argmax_only"] = per_task[tasks[0]]["vs_dependency_argmax_only"]["all"]["tie"]["value"]
        summary["lens_answer_before_reasoning"] = lens_metrics["lens_answer_before_reasoning_any_layer"]["value"]
        summary["lens_answer_readable_first"] = lens_metrics["lens_order_answer_vs_reasoning"]["before"]["value"]
        for name, values in causal.items():
            key = name.replace(",", "").replace(" ", "_")
            summary[f"causal_{key}_follows"] = values["follows"]["value"]
            summary[f"causal_{key}_unchanged"] = values["unchanged"]["value"]
        out.metrics.update(
            summary=summary, n=n, tasks=list(tasks), per_task=per_task, lens_and_probes=lens_metrics,
            causal_test=causal, model=studies.model_info(hm),
            options={"seed": seed, "quick": quick, "shift": shift, "self_conditioning": self_conditioning,
                     "lens_task": tasks[0], **{k: str(v) for k, v in gen_kwargs.items()}},
        )  # fmt: skip
    return out.metrics
