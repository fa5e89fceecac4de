"""SAE features over denoising time: activation per step and position, and the step a feature commits.

    trace = feature_trace(sae, cache, "decoder.blocks.1.hook_resid_post")   # [steps, batch, pos, d_sae]
    commit = commit_steps(trace[..., f])                                     # [batch, pos]: step index
    best = best_features(trace[-1], labels, mask)                            # features that detect a label

A feature *commits* at the first step from which it stays within ``tol`` of its final value
(``tol`` a fraction of the feature's largest activation in the trace; TopK features are exactly
zero when inactive, so an off feature that stays off commits at step 0).
"""

from __future__ import annotations

import torch

from diffinterp.instruments.saes.activations import sae_input
from diffinterp.stats import auroc


@torch.no_grad()
def encode_activation(sae, activation: torch.Tensor, name: str) -> torch.Tensor:
    """``[batch, pos, d_sae]``: the SAE's feature activations for one hook activation."""
    rows = sae_input(sae, activation, name)  # checks the hook and the width
    return sae.encode(rows).reshape(*activation.shape[:2], -1)


@torch.no_grad()
def feature_trace(sae, cache, hook: str, *, block: int = 0, features=None) -> torch.Tensor:
    """``[steps, batch, pos, n_features]``: feature activations at every cached step of ``block``
    (``features``: indices to keep, default all)."""
    steps = sorted(step for name, step, b in cache.keys() if name == hook and b == block and step is not None)
    if not steps:
        raise ValueError(f"the cache holds no decoder steps of '{hook}' in block {block}: cache it with run_with_cache")
    if steps != list(range(len(steps))):
        raise ValueError(f"the cache holds steps {steps} of '{hook}': a trace needs every step from 0")
    keep = slice(None) if features is None else list(features)  # kept per step: never all features at once
    return torch.stack([encode_activation(sae, cache.get(hook, step, block), hook)[..., keep] for step in steps])


def commit_steps(trace: torch.Tensor, *, tol: float = 0.1) -> torch.Tensor:
    """``trace[steps, ...]`` -> the commit step of each trailing entry (``trace.shape[1:]``, long)."""
    if trace.dim() < 1 or len(trace) == 0:
        raise ValueError("a trace needs at least one step")
    scale = trace.abs().amax(0).clamp_min(1e-12)
    settled = (trace - trace[-1]).abs() <= tol * scale
    # the commit step is one past the last step that was not within tol (0 if none)
    steps = torch.arange(1, len(trace) + 1).view(-1, *([1] * (trace.dim() - 1)))
    last_off = torch.where(~settled, steps, torch.zeros_like(steps)).amax(0)
    return last_off.clamp_max(len(trace) - 1)


def forming_steps(values: torch.Tensor, *, tol: float = 0.1) -> tuple[int, ...]:
    """The steps a feature is forming in a 1-d trace ``values[steps]``: from the first step whose
    value differs from the step before by more than ``tol`` of the trace's range (the step that
    computed the change; step 0 if none does) to its commit step. What an adaptive steering
    schedule steers (Zhou et al. 2026, "Steering Without Breaking")."""
    if values.dim() != 1:
        raise ValueError(f"forming_steps takes a trace of one feature, [steps]; got {list(values.shape)}")
    commit = int(commit_steps(values, tol=tol))
    span = float(values.max() - values.min())
    moves = (values.diff().abs() > tol * span).nonzero() if span > 0 else torch.empty(0, 1, dtype=torch.long)
    start = min(int(moves[0, 0]) + 1, commit) if len(moves) else 0
    return tuple(range(start, commit + 1))


def best_features(features: torch.Tensor, labels: torch.Tensor, *, top: int = 5) -> list[dict]:
    """The features whose activation best separates ``labels`` (bool ``[n]``) over ``features``
    ``[n, d_sae]``: AUROC of each feature's activation for the label, the ``top`` highest, with the
    feature's firing rate on each side."""
    if features.dim() != 2 or len(features) != len(labels):
        raise ValueError(
            f"need features [n, d_sae] and labels [n]; got {list(features.shape)} and {list(labels.shape)}"
        )
    labels = labels.bool()
    if labels.all() or not labels.any():
        raise ValueError("labels must contain both classes")
    scores = [auroc(features[:, f].tolist(), labels.int().tolist()) for f in range(features.shape[1])]
    order = sorted(range(len(scores)), key=lambda f: -scores[f])[:top]
    return [
        {
            "feature": f,
            "auroc": scores[f],
            "fires_with_label": float((features[labels, f] > 0).float().mean()),
            "fires_without_label": float((features[~labels, f] > 0).float().mean()),
        }
        for f in order
    ]
