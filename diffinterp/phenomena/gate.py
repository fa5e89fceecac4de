"""The dynamics gate: whether a model's denoising loop carries the computation a finding is about.

A finding about *how* a diffusion model reasons (what settles when, what gets revised, what a
transient token carries) only says something about reasoning if the steps do the work. On a model
that decides its answer in the first pass, commit order, revisions and smears are properties of
the sampler: they move with its settings while the predictions stay put. The gate asks three
things of the prompts a finding was measured on:

1. **one pass vs the full run**: exact match with ``max_denoising_steps=1`` (the step-0 argmax) is
   at least :data:`LOOP_GAP` below the full run's;
2. **what the first step already knew**: at most :data:`STEP0_SHARE` of the final tokens at the
   phenomenon's positions equal the step-0 argmax;
3. **the sampler**: the finding re-measured under one alternative sampler setting
   (:data:`ALTERNATIVE_SAMPLER`) stays within its 95% interval or :data:`STABILITY` of its value.

A finding passes when all three hold; otherwise it is labelled *uninformative about reasoning*
(with the reasons). Without reference answers (random prompts) 1. cannot be measured and the gate
does not pass. Every number comes with ``n`` and a 95% interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffinterp.stats import proportion

LOOP_GAP = 0.25
STEP0_SHARE = 0.70
STABILITY = 0.10
#: The alternative setting a finding is re-measured under: a colder, flatter temperature schedule
#: and a looser acceptance bound (the settings that moved toy4's commit order from 2% to 82%).
ALTERNATIVE_SAMPLER: dict[str, Any] = {"t_max": 0.4, "t_min": 0.1, "entropy_bound": 0.5}
INFORMATIVE, UNINFORMATIVE = "informative about reasoning", "uninformative about reasoning"


def step0_agreement(step0_argmax: torch.Tensor, final: torch.Tensor, focus: torch.Tensor | None = None) -> dict:
    """The share of final tokens equal to the step-0 argmax, over the ``focus`` positions (a bool
    mask, default every position): a :func:`~diffinterp.stats.proportion` dict. All three ``[B, P]``."""
    if step0_argmax.shape != final.shape or (focus is not None and focus.shape != final.shape):
        shapes = [list(t.shape) for t in (step0_argmax, final) + ((focus,) if focus is not None else ())]
        raise ValueError(f"step-0 argmax, final canvas and focus mask must all be [batch, canvas]; got {shapes}")
    focus = torch.ones_like(final, dtype=torch.bool) if focus is None else focus.bool()
    same = (step0_argmax == final) & focus
    return proportion(int(same.sum()), int(focus.sum()))


def focus_mask(positions: Sequence[Sequence[int]], canvas_length: int) -> torch.Tensor:
    """A ``[B, canvas_length]`` bool mask from per-row lists of canvas positions."""
    mask = torch.zeros(len(positions), canvas_length, dtype=torch.bool)
    for row, cols in enumerate(positions):
        mask[row, [c for c in cols if c < canvas_length]] = True
    return mask


def finding_stable(main: dict | None, alternative: dict | None, tolerance: float = STABILITY) -> bool | None:
    """Whether the finding under the alternative setting agrees with the main one: within the main
    value's 95% interval, or within ``tolerance`` of it. ``None`` when either was not measured."""
    if not main or not alternative or main.get("value") is None or alternative.get("value") is None:
        return None
    value, other = main["value"], alternative["value"]
    low, high = main.get("ci_low"), main.get("ci_high")
    inside = low is not None and high is not None and low <= other <= high
    return bool(inside or abs(other - value) <= tolerance)


def evaluate_gate(
    full: dict | None,
    one_pass: dict | None,
    step0: dict,
    finding: dict | None = None,
    alternative_finding: dict | None = None,
    *,
    alternative_setting: dict[str, Any] | None = None,
    finding_name: str = "finding",
) -> dict[str, Any]:
    """The gate's fields and verdict from its measurements (each a proportion or mean dict with
    ``value``, ``ci_low``, ``ci_high``, ``n``; ``full`` / ``one_pass`` ``None`` without answers)."""
    reasons = []
    gap = None
    if full is None or one_pass is None or full.get("value") is None or one_pass.get("value") is None:
        loop = False
        reasons.append("no reference answers: one-pass vs full accuracy cannot be measured")
    else:
        gap = full["value"] - one_pass["value"]
        loop = gap >= LOOP_GAP
        if not loop:
            reasons.append(
                f"one-pass accuracy {one_pass['value']:.3f} is within {LOOP_GAP} of the full run's "
                f"{full['value']:.3f}: the first pass already decides the answer"
            )
    step0_ok = step0.get("value") is not None and step0["value"] <= STEP0_SHARE
    if not step0_ok:
        share = step0.get("value")
        reasons.append(
            f"{share:.3f} of the final tokens at the phenomenon's positions equal the step-0 argmax "
            f"(gate: <= {STEP0_SHARE})"
            if share is not None
            else "no positions to compare with the step-0 argmax"
        )
    stable = finding_stable(finding, alternative_finding)
    if stable is False:
        reasons.append(
            f"the {finding_name} moves from {finding['value']:.3f} to {alternative_finding['value']:.3f} under the "
            f"alternative sampler setting {alternative_setting or ALTERNATIVE_SAMPLER}"
        )
    passed = bool(loop and step0_ok and stable is not False)
    return {
        "full_accuracy": full,
        "one_pass_accuracy": one_pass,
        "accuracy_gap": gap,
        "final_equals_step0": step0,
        "finding": finding,
        "alternative": {"setting": dict(alternative_setting or ALTERNATIVE_SAMPLER), "finding": alternative_finding},
        "loop_load_bearing": bool(loop and step0_ok),
        "finding_stable": stable,
        "passed": passed,
        "verdict": INFORMATIVE if passed else UNINFORMATIVE,
        "reasons": reasons,
        "thresholds": {"loop_gap": LOOP_GAP, "step0_share": STEP0_SHARE, "stability": STABILITY},
    }
