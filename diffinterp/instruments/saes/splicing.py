"""Splicing an SAE into the denoising loop, and how well it reconstructs each step.

    with spliced(hm, sae, "decoder.blocks.1.hook_resid_post", steps=[3]):       # the SAE replaces it
        trajectory = hm.generate(input_ids, attention_mask=mask)
    with spliced(hm, sae, hook, error_term=True, edit=ablate(feature=42)):      # edit features only
        ...
    reconstruction_by_step(hm, sae, hook, input_ids, mask)                     # MSE / EV / L0 per step
    splice_by_step(hm, sae, hook, input_ids, mask, targets)                    # accuracy, CE per step

Without the error term the hook's activation is replaced by the SAE's reconstruction. With it, the
activation becomes ``x + decode(edit(f)) - decode(f)`` (``f = encode(x)``): the SAE's error
``x - decode(f)`` is kept, so only a feature edit changes anything, and with no edit the run is
the unspliced run exactly (``decode(f) - decode(f)`` is exactly zero). This is SAELens's
``use_error_term`` written so that no rounding enters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch

from diffinterp.instruments.saes.activations import flat_features, position_masks, sae_input
from diffinterp.instruments.saes.training import reconstruction_metrics
from diffinterp.stats import mean_ci, proportion_of

FeatureEdit = Callable[[torch.Tensor, object], torch.Tensor]


def splice_hook(sae, *, error_term: bool = False, edit: FeatureEdit | None = None):
    """A hook function ``fn(activation, hook)`` that routes the activation through ``sae``.

    ``edit(features, hook) -> features`` changes the feature activations (``[batch * pos, d_sae]``)
    before decoding; it must not modify its argument in place."""

    def fn(activation: torch.Tensor, hook) -> torch.Tensor:
        flat = sae_input(sae, activation, hook.name)
        features = sae.encode(flat)
        edited = edit(features, hook) if edit is not None else features
        decoded = sae.decode(edited)
        if error_term:  # the unedited reconstruction is the same computation: reuse it
            new = flat + (decoded - (decoded if edited is features else sae.decode(features)))
        else:
            new = decoded
        return new.to(activation.dtype).reshape(activation.shape)

    return fn


@contextmanager
def spliced(hm, sae, hook: str, *, steps=None, blocks=None, error_term: bool = False, edit: FeatureEdit | None = None):
    """Generations in the body run with ``sae`` spliced into ``hook`` at ``steps`` (None: all)."""
    with (
        torch.no_grad(),
        hm.hooks([(hook, splice_hook(sae, error_term=error_term, edit=edit))], steps=steps, blocks=blocks),
    ):
        yield hm


def ablate(features: Iterable[int], value: float = 0.0) -> FeatureEdit:
    """An edit that sets ``features`` to ``value`` (0: ablation)."""
    index = torch.tensor(sorted(set(features)), dtype=torch.long)

    def edit(acts: torch.Tensor, _hook) -> torch.Tensor:
        out = acts.clone()
        out[:, index] = value
        return out

    return edit


@torch.no_grad()
def reconstruction_by_step(
    hm, sae, hook: str, input_ids, attention_mask=None, *, positions: str = "all", block: int = 0, **gen_kwargs
) -> list[dict]:
    """For each decoder step of ``block``: the SAE's MSE, explained variance and L0 on that step's
    activations (``positions`` as in :mod:`~diffinterp.instruments.saes.activations`)."""
    trajectory, cache = hm.run_with_cache(
        input_ids, names_filter=[hook], blocks=[block], attention_mask=attention_mask, **gen_kwargs
    )
    rows = []
    for step, mask in enumerate(position_masks(trajectory, block, positions)):
        x = flat_features(cache.get(hook, step, block), hook)[mask]
        if len(x) >= 2:
            rows.append({"step": step, **reconstruction_metrics(sae, x.float())})
    return rows


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None) -> float:
    """Mean cross-entropy of ``logits`` ``[batch, pos, vocab]`` against ``targets`` ``[batch, pos]``
    (-100 = ignored), over ``rows`` (bool ``[batch]``, default all)."""
    if rows is not None:
        logits, targets = logits[rows], targets[rows]
    return float(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100))


def cross_entropy_by_row(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[batch]``: each row's mean cross-entropy of ``logits`` ``[batch, pos, vocab]`` against
    ``targets`` ``[batch, pos]`` over the positions it gives (-100 = ignored; NaN if it gives none)."""
    per_token = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )  # [batch, pos], 0 where ignored
    given = (targets != -100).sum(-1)
    return per_token.sum(-1) / given.clamp(min=1) + torch.where(given > 0, 0.0, float("nan"))


def exact_match(canvas: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[batch]`` bool: the canvas equals ``targets`` wherever a target is given (not -100)."""
    given = targets != -100
    return ((canvas == targets) | ~given).all(-1)


@torch.no_grad()
def splice_by_step(
    hm, sae, hook: str, input_ids, attention_mask, targets: torch.Tensor, *, steps=None, seed: int = 0, **gen_kwargs
) -> dict:
    """The DLM-Scope splice test, one denoising step at a time.

    A clean run (its random draws replayed by every spliced run, so only the splice differs), then
    for each step ``s`` (default: every step the clean run made in block 0) a run with the SAE
    replacing ``hook`` at step ``s`` only. Per step: the cross-entropy of step ``s``'s logits against
    ``targets`` (the reference canvas, ``[batch, canvas]``, -100 = ignored) spliced and clean, and
    the final exact match spliced and clean (over rows still denoising at ``s``), and ``delta_ce``:
    the mean over those rows of each row's spliced minus clean cross-entropy with a paired
    bootstrap 95% interval (rows resampled; ``seed`` seeds it)."""
    clean = hm.generate(input_ids, attention_mask=attention_mask, record_logits=True, **gen_kwargs)
    record = clean.blocks[0]
    clean_match = exact_match(record.final_canvas, targets)
    out = {"clean_accuracy": proportion_of(clean_match.tolist()), "n": len(targets), "steps": []}
    for step in steps if steps is not None else range(record.n_steps):
        if step >= record.n_steps:
            continue
        active = record.steps[step].active
        with spliced(hm, sae, hook, steps=[step], blocks=[0]):
            run = hm.generate(input_ids, attention_mask=attention_mask, record_logits=True, replay=clean, **gen_kwargs)
        match = exact_match(run.blocks[0].final_canvas, targets)
        # the rows still denoising at this step, indexed once
        clean_logits, spliced_logits = record.steps[step].logits[active], run.blocks[0].steps[step].logits[active]
        given = targets[active]
        delta = cross_entropy_by_row(spliced_logits, given) - cross_entropy_by_row(clean_logits, given)
        out["steps"].append(
            {
                "step": step,
                "n": int(active.sum()),
                "ce_clean": cross_entropy(clean_logits, given),
                "ce_spliced": cross_entropy(spliced_logits, given),
                "accuracy_clean": proportion_of(clean_match[active].tolist()),
                "accuracy_spliced": proportion_of(match[active].tolist()),
                # rows that give no target have no CE; any other NaN (a broken splice) is kept and shows
                "delta_ce": mean_ci(delta[(given != -100).any(-1)].tolist(), seed=seed),
            }
        )
    return out
