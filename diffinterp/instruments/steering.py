"""Steering across denoising time: add a direction to a hook's activation at chosen steps.

    direction = sae.W_dec[feature]                                  # or mean_difference(acts_a, acts_b)
    with steered(hm, "decoder.blocks.1.hook_resid_post", direction, 4.0, steps=None):        # uniform
        uniform = hm.generate(input_ids, attention_mask=mask)
    with steered(hm, hook, direction, 4.0, steps=forming_steps(trace)):                       # adaptive
        adaptive = hm.generate(input_ids, attention_mask=mask)

``steps=None`` steers every step (a uniform schedule); a tuple steers those steps only (the hook
is attached with ``hm.hooks(..., steps=)``, so at every other step the activation is untouched).
``positions`` limits the edit to canvas positions. Strength 0 adds exactly nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch


def mean_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean(a) - mean(b)`` over the rows of two activation sets ``[n, d]`` (a steering vector)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two activation sets [n, d] of one width; got {list(a.shape)} and {list(b.shape)}")
    return a.float().mean(0) - b.float().mean(0)


def steering_hook(direction: torch.Tensor, strength: float, *, positions: Iterable[int] | None = None):
    """``fn(activation, hook)`` adding ``strength * direction`` (``[d]``, the activation's last axis,
    or its heads concatenated) at ``positions`` (None: every position)."""
    direction = direction.detach().flatten()
    index = None if positions is None else torch.tensor(sorted(set(positions)), dtype=torch.long)

    def fn(activation: torch.Tensor, hook) -> torch.Tensor:
        width = activation.shape[2:].numel() if activation.dim() == 4 else activation.shape[-1]
        if direction.numel() != width:
            raise ValueError(f"steering direction has {direction.numel()} entries; '{hook.name}' has width {width}")
        add = (
            (strength * direction)
            .to(activation.dtype)
            .view(activation.shape[2:] if activation.dim() == 4 else (width,))
        )
        out = activation.clone()
        if index is None:
            out += add
        else:
            out[:, index.to(activation.device)] += add
        return out

    return fn


@contextmanager
def steered(hm, hook: str, direction: torch.Tensor, strength: float, *, steps=None, blocks=None, positions=None):
    """Generations in the body add ``strength * direction`` at ``hook`` on ``steps`` (None: all)."""
    if steps is not None and len(tuple(steps)) == 0:
        raise ValueError("an empty steering schedule steers nothing: give steps, or None for every step")
    with hm.hooks([(hook, steering_hook(direction, strength, positions=positions))], steps=steps, blocks=blocks):
        yield hm
