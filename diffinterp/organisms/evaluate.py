"""Exact-match evaluation of the organisms on their held-out splits.

The diffusion model is evaluated through :func:`diffinterp.core.loading.load_model` and
``HookedDiffusionGemma.generate`` (the exact replay of ``hf_model.generate``), in batches with left
padding and an attention mask; the AR twin with ``Gemma4ForCausalLM.generate`` (greedy) on
``<bos> prompt :``.

A prediction is the generated text up to the first ``<eos>``; it is correct iff it equals the
reference answer token for token (or one of the task's valid alternatives). Accuracy comes with a
95% Wilson interval. For the diffusion model the result also says how much of the final canvas the
first denoising step already predicted (``final_equals_step0``: the share of canvas positions, up to
and including each row's first ``<eos>``, whose final token is the step-0 argmax) - one half of the
dynamics gate; ``max_denoising_steps=1`` gives the other (the one-pass accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffinterp.core.distributed import map_in_order
from diffinterp.core.hooked import HookedDiffusionGemma
from diffinterp.organisms.batches import prompt_batch
from diffinterp.organisms.catalog import task as get_task
from diffinterp.organisms.task import DEFAULT_TEST_SIZE
from diffinterp.organisms.tokenizer import EOS_ID, decode
from diffinterp.organisms.twin import ARBaseline, ar_predict
from diffinterp.stats import wilson_interval

EVAL_SEED = 0
DEFAULT_AR_LENGTH = 16


@dataclass
class Predictions:
    """Decoded outputs of one batch; ``steps``: denoising steps each row used (AR: tokens);
    ``step0_agreement``: per row, the share of canvas positions up to the first ``<eos>`` whose
    final token equals the step-0 argmax (``None`` for the AR twin or a bare HF model)."""

    texts: list[str]
    steps: list[float]
    step0_agreement: list[float] | None = None


def _is_hooked(model) -> bool:
    return isinstance(model, HookedDiffusionGemma)


def step0_agreement(step0_argmax: torch.Tensor, final: torch.Tensor) -> list[float]:
    """Per row, the share of positions up to and including the first ``<eos>`` of ``final`` whose
    token equals ``step0_argmax`` (both ``[batch, canvas]``)."""
    out = []
    for first, last in zip(step0_argmax.tolist(), final.tolist(), strict=True):
        end = last.index(EOS_ID) + 1 if EOS_ID in last else len(last)
        out.append(sum(a == b for a, b in zip(first[:end], last[:end], strict=True)) / end)
    return out


@torch.no_grad()
def predict_batch(
    model,
    prompts: list[str],
    *,
    model_kind: str = "diffusion",
    bottleneck: str | None = None,
    seed: int = EVAL_SEED,
    canvas_length: int | None = None,
    **gen_kwargs: Any,
) -> Predictions:
    """Predictions for ``prompts`` (see :class:`Predictions`).

    ``model``: a :class:`~diffinterp.HookedDiffusionGemma`, a bare HF DiffusionGemma, or (with
    ``model_kind="ar"``) the AR twin as ``Gemma4ForCausalLM`` or the :class:`ARBaseline` wrapper.
    ``canvas_length``: the longest output read (default: the model's canvas; the AR twin: its
    organism's, or 16).
    """
    if isinstance(model, ARBaseline):
        if model_kind != "ar":
            raise ValueError("an ARBaseline is the autoregressive twin: pass model_kind='ar'")
        canvas_length = canvas_length or model.max_new_tokens
        model = model.model
    torch.manual_seed(seed)
    if model_kind == "ar":
        gen_kwargs.setdefault("max_new_tokens", canvas_length or DEFAULT_AR_LENGTH)
        texts = ar_predict(model, prompts, **gen_kwargs)
        return Predictions(texts, [float(len(p.split()) + 1) for p in texts])
    hf = model.model if _is_hooked(model) else model
    canvas_length = canvas_length or hf.config.canvas_length
    ids, mask = prompt_batch(prompts)
    ids, mask = ids.to(hf.device), mask.to(hf.device)  # e.g. a GPU during training
    if "generation_config" not in gen_kwargs:
        gen_kwargs.setdefault("max_new_tokens", canvas_length)
    if _is_hooked(model):
        if bottleneck is not None:
            gen_kwargs["bottleneck"] = bottleneck
        traj = model.generate(ids, attention_mask=mask, **gen_kwargs)
        new = traj.sequences[:, traj.prompt_len :]
        active = torch.zeros(len(prompts))
        for block in traj.blocks:
            for step in block.steps:
                active += step.active.float().cpu()
        steps = (active / max(1, len(traj.blocks))).tolist()
        first = traj.block(0)
        agreement = step0_agreement(first.steps[0].argmax.cpu(), first.final_canvas.cpu())
    else:  # a bare HF model (the quick evals during training)
        if bottleneck not in (None, "continuous"):
            raise ValueError("bottleneck= needs a HookedDiffusionGemma (diffinterp.load_model)")
        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
        new = out.sequences[:, ids.shape[1] :]
        steps, agreement = [float("nan")] * len(prompts), None
    return Predictions([decode(row[:canvas_length]) for row in new], steps, agreement)


def predict(model, prompts: list[str], **kwargs: Any) -> tuple[list[str], list[float]]:
    """``(texts, steps)`` of :func:`predict_batch`."""
    result = predict_batch(model, prompts, **kwargs)
    return result.texts, result.steps


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
    canvas_length: int | None = None,
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Exact-match accuracy of ``model`` on the held-out split of ``task`` (first ``n`` examples)."""
    spec = get_task(task)
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    exs = examples if examples is not None else spec.test_set(n or DEFAULT_TEST_SIZE)
    if n is not None:
        exs = exs[:n]
    correct, steps, agreement, failures = 0, [], [], []
    by_case: dict[str, list[int]] = {}  # case -> [correct, n]
    starts = list(range(0, len(exs), batch_size))

    def predict(start: int):
        return predict_batch(
            model,
            [e.prompt for e in exs[start : start + batch_size]],
            model_kind=model_kind,
            bottleneck=bottleneck,
            seed=seed + start,
            canvas_length=canvas_length,
            **gen_kwargs,
        )

    # each chunk seeded by its first row: under torchrun the ranks split the chunks (same results)
    for start, result in zip(starts, map_in_order(predict, starts), strict=True):
        chunk = exs[start : start + batch_size]
        steps.extend(result.steps)
        agreement.extend(result.step0_agreement or [])
        for e, p in zip(chunk, result.texts, strict=True):
            hit = spec.accepts(p, e)
            case = spec.case_of(e) if spec.case_of is not None else "all"
            tally = by_case.setdefault(case, [0, 0])
            tally[0] += hit
            tally[1] += 1
            if hit:
                correct += 1
            elif len(failures) < 5:
                failures.append({"prompt": e.prompt, "answer": e.answer, "prediction": p})
    lo, hi = wilson_interval(correct, len(exs))
    valid = [s for s in steps if s == s]
    return {
        "task": task,
        "accuracy": correct / max(1, len(exs)),
        "ci_low": lo,
        "ci_high": hi,
        "n": len(exs),
        "correct": correct,
        "mean_steps_per_canvas": (sum(valid) / len(valid)) if valid else None,
        "final_equals_step0": (sum(agreement) / len(agreement)) if agreement else None,
        "bottleneck": bottleneck or ("continuous" if model_kind == "diffusion" else None),
        "by_case": {case: {"correct": k, "n": n} for case, (k, n) in sorted(by_case.items(), key=_case_key)},
        "failures": failures,
    }


def _case_key(item) -> tuple:
    """Sort cases by their label with numbers compared as numbers (``"rev 9"`` before ``"rev 10"``)."""
    # (0, number) or (1, word): a number and a word in the same place compare without a TypeError
    words = item[0].replace(",", " ").split()
    return tuple((0, int(w), "") if w.isdigit() else (1, 0, w) for w in words)
