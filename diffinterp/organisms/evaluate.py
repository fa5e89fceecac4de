"""Exact-match evaluation of the toy models on the held-out splits.

The diffusion model is evaluated through :func:`diffinterp.core.loading.load_model` and
``HookedDiffusionGemma.generate`` (the exact replay of ``hf_model.generate``), in batches with left
padding and an attention mask; the AR twin with ``Gemma4ForCausalLM.generate`` (greedy) on ``<bos> prompt :``.

A prediction is the generated text up to the first ``<eos>``; it is correct iff it equals the
reference answer token for token. Accuracy comes with a 95% Wilson interval.
"""

from __future__ import annotations

from typing import Any

import torch

from diffinterp.core.hooked import HookedDiffusionGemma
from diffinterp.organisms import tasks as T
from diffinterp.organisms.batches import CANVAS_LENGTH, prompt_batch
from diffinterp.organisms.tokenizer import decode
from diffinterp.organisms.twin import ARBaseline, ar_predict

EVAL_SEED = 0


def _is_hooked(model) -> bool:
    return isinstance(model, HookedDiffusionGemma)


@torch.no_grad()
def predict(
    model,
    prompts: list[str],
    *,
    model_kind: str = "diffusion",
    bottleneck: str | None = None,
    seed: int = EVAL_SEED,
    **gen_kwargs: Any,
) -> tuple[list[str], list[float]]:
    """Predictions for ``prompts`` and the denoising steps each example's canvas used (AR: tokens).

    ``model``: a :class:`~diffinterp.HookedDiffusionGemma`, a bare HF DiffusionGemma, or (with
    ``model_kind="ar"``) the AR twin as ``Gemma4ForCausalLM`` or the :class:`ARBaseline` wrapper.
    """
    if isinstance(model, ARBaseline):
        if model_kind != "ar":
            raise ValueError("an ARBaseline is the autoregressive twin: pass model_kind='ar'")
        model = model.model
    torch.manual_seed(seed)
    if model_kind == "ar":
        preds = ar_predict(model, prompts, **gen_kwargs)
        return preds, [float(len(p.split()) + 1) for p in preds]
    ids, mask = prompt_batch(prompts)
    device = model.model.device if _is_hooked(model) else model.device  # e.g. a GPU during training
    ids, mask = ids.to(device), mask.to(device)
    gen_kwargs.setdefault("max_new_tokens", CANVAS_LENGTH)
    if _is_hooked(model):
        if bottleneck is not None:
            gen_kwargs["bottleneck"] = bottleneck
        traj = model.generate(ids, attention_mask=mask, **gen_kwargs)
        new = traj.sequences[:, traj.prompt_len :]
        active = torch.zeros(len(prompts))
        for block in traj.blocks:
            for step in block.steps:
                active += step.active.float().cpu()
        n_blocks = max(1, len(traj.blocks))
        steps = (active / n_blocks).tolist()
    else:  # a bare HF model (used for the quick evals during training)
        if bottleneck not in (None, "continuous"):
            raise ValueError("bottleneck= needs a HookedDiffusionGemma (diffinterp.load_model)")
        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
        new = out.sequences[:, ids.shape[1] :]
        steps = [float("nan")] * len(prompts)
    preds = [decode(row[:CANVAS_LENGTH]) for row in new]
    return preds, steps


def evaluate_task(
    model,
    task: str,
    *,
    n: int | None = None,
    model_kind: str = "diffusion",
    batch_size: int = 200,
    bottleneck: str | None = None,
    seed: int = EVAL_SEED,
    examples: list | None = None,
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Exact-match accuracy of ``model`` on the held-out split of ``task`` (first ``n`` examples)."""
    exs = examples if examples is not None else T.test_set(task, n or T.DEFAULT_TEST_SIZE)
    if n is not None:
        exs = exs[:n]
    correct, steps = 0, []
    failures = []
    by_case: dict[str, list[int]] = {}  # case -> [correct, n]
    for start in range(0, len(exs), batch_size):
        chunk = exs[start : start + batch_size]
        preds, st = predict(
            model,
            [e.prompt for e in chunk],
            model_kind=model_kind,
            bottleneck=bottleneck,
            seed=seed + start,
            **gen_kwargs,
        )
        steps.extend(st)
        for e, p in zip(chunk, preds, strict=True):
            hit = T.exact_match(p, e)
            tally = by_case.setdefault(T.case_of(e), [0, 0])
            tally[0] += hit
            tally[1] += 1
            if hit:
                correct += 1
            elif len(failures) < 5:
                failures.append({"prompt": e.prompt, "answer": e.answer, "prediction": p})
    lo, hi = T.wilson_interval(correct, len(exs))
    valid = [s for s in steps if s == s]
    return {
        "task": task,
        "accuracy": correct / max(1, len(exs)),
        "ci_low": lo,
        "ci_high": hi,
        "n": len(exs),
        "correct": correct,
        "mean_steps_per_canvas": (sum(valid) / len(valid)) if valid else None,
        "bottleneck": bottleneck or ("continuous" if model_kind == "diffusion" else None),
        "by_case": {case: {"correct": k, "n": n} for case, (k, n) in sorted(by_case.items(), key=_case_key)},
        "failures": failures,
    }


def _case_key(item) -> tuple:
    """Sort cases by their label with numbers compared as numbers (``"rev 9"`` before ``"rev 10"``)."""
    return tuple(int(w) if w.isdigit() else w for w in item[0].split())
