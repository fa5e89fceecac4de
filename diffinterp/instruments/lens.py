"""Logit lens over a denoising run: what each layer would predict, at every step and canvas position.

    lens = logit_lens(hm, cache)                        # cache of decoder.blocks.*.hook_resid_post
    lens.logits                                         # [steps, layers, batch, pos, vocab]
    first = first_prediction(lens, traj.block(0).final_canvas)
    first.step, first.layer                             # [batch, pos]: first (step, layer) predicting the final token
    settle_steps(traj)                                  # [batch, pos]: the step from which each position's argmax stays final

The lens reads the residual stream through the model's own head: the final RMSNorm
(``decoder.norm``), ``lm_head``, a float32 cast and the soft-cap ``30·tanh(x/30)``, exactly as
``DiffusionGemmaForBlockDiffusion.forward`` does, so at the last layer it equals the model's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffinterp.records.cache import DenoisingCache
from diffinterp.records.trajectory import Trajectory

RESID_POST = "decoder.blocks.{layer}.hook_resid_post"


def unembed(hm, resid: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a residual stream ``[..., d_model]`` as the model computes them (float32, soft-capped).

    ``tokens`` (a 1-D LongTensor of vocabulary ids) restricts the unembedding to those columns.
    """
    model = hm.model
    weight = model.lm_head.weight
    normed = model.model.decoder.norm(resid.to(device=weight.device, dtype=weight.dtype))
    if tokens is None:
        logits = model.lm_head(normed)
    else:
        logits = torch.nn.functional.linear(normed, weight[tokens.to(weight.device)])
    logits = logits.to(torch.float32)
    cap = model.final_logit_softcapping
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


@dataclass
class LogitLens:
    """Logit-lens logits of one block.

    ``logits``: ``[steps, layers, batch, pos, vocab]`` (``vocab`` = ``len(tokens)`` when restricted);
    ``steps`` / ``layers``: the labels of the first two axes; ``tokens``: the vocabulary ids of the
    last axis (None = the whole vocabulary).
    """

    logits: torch.Tensor
    steps: list[int]
    layers: list[int]
    block: int = 0
    tokens: torch.Tensor | None = None

    @property
    def argmax(self) -> torch.Tensor:
        """Predicted token ids ``[steps, layers, batch, pos]``."""
        index = self.logits.argmax(-1)
        return self.tokens.to(index.device)[index] if self.tokens is not None else index

    def probs(self) -> torch.Tensor:
        """Softmax over the last axis ``[steps, layers, batch, pos, vocab]`` (over ``tokens`` if restricted)."""
        return self.logits.softmax(-1)

    def prob_of(self, targets: torch.Tensor) -> torch.Tensor:
        """Probability of ``targets`` ``[batch, pos]`` (e.g. the final canvas): ``[steps, layers, batch, pos]``."""
        if self.tokens is not None:
            raise ValueError("prob_of needs the full vocabulary: build the lens with tokens=None")
        index = targets.to(self.logits.device).expand(self.logits.shape[:-1]).unsqueeze(-1)
        return self.probs().gather(-1, index).squeeze(-1)


def _lens_grid(hm, cache: DenoisingCache, hook: str, layers, steps, block: int) -> tuple[list[int], list[int]]:
    """The (layers, steps) a lens covers: those given, or those ``cache`` recorded for ``hook``."""
    if "{layer}" not in hook:
        raise ValueError(f"hook must be a template with '{{layer}}', e.g. '{RESID_POST}'; got '{hook}'")
    n_layers = hm.text_config.num_hidden_layers
    if layers is None:
        layers = [layer for layer in range(n_layers) if hook.format(layer=layer) in cache.names]
        if not layers:
            raise KeyError(f"the cache holds no '{hook}' activations; record them with run_with_cache")
    layers = list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise IndexError(f"layer {bad[0]} out of range: the decoder has layers 0..{n_layers - 1}")
    recorded = cache.steps(hook.format(layer=layers[0]), block)
    return layers, (recorded if steps is None else list(steps))


def logit_lens(
    hm,
    cache: DenoisingCache,
    *,
    hook: str = RESID_POST,
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    block: int = 0,
    tokens: torch.Tensor | None = None,
) -> LogitLens:
    """The logit lens at every (step, layer, position) of ``cache``'s ``block``.

    ``hook`` is a template with ``{layer}`` (default the residual stream after each layer); layers and
    steps default to those recorded. For big vocabularies pass ``tokens`` to keep only those columns,
    or use :func:`target_lens`, which keeps the full-vocabulary argmax and target probabilities only.
    """
    layers, steps = _lens_grid(hm, cache, hook, layers, steps, block)
    rows = []
    with torch.no_grad():
        for step in steps:
            rows.append(
                torch.stack([unembed(hm, cache.get(hook.format(layer=layer), step, block), tokens) for layer in layers])
            )
    return LogitLens(torch.stack(rows), steps, layers, block, tokens)


@dataclass
class TargetLens:
    """The full-vocabulary logit lens, reduced as it is computed to what most analyses read.

    ``argmax``: ``[steps, layers, batch, pos]`` predicted token ids; ``target_prob``: the same shape,
    the probability of ``targets`` (e.g. the final canvas). Equal to ``LogitLens.argmax`` and
    ``LogitLens.prob_of(targets)``, without holding ``[steps, layers, batch, pos, vocab]`` (for the
    26B model's 262k vocabulary that tensor is terabytes).
    """

    argmax: torch.Tensor
    target_prob: torch.Tensor
    steps: list[int]
    layers: list[int]
    block: int = 0
    targets: torch.Tensor | None = None

    def prob_of(self, targets: torch.Tensor) -> torch.Tensor:
        """``target_prob``, for the targets it was built with (as ``LogitLens.prob_of``)."""
        if self.targets is None or not torch.equal(targets.cpu(), self.targets.cpu()):
            raise ValueError("a TargetLens holds the probabilities of its own targets only: build it with these")
        return self.target_prob


def target_lens(
    hm,
    cache: DenoisingCache,
    targets: torch.Tensor,
    *,
    hook: str = RESID_POST,
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    block: int = 0,
    rows_per_chunk: int = 8,
) -> TargetLens:
    """:func:`logit_lens` reduced to its argmax and the probability of ``targets`` ``[batch, pos]``,
    ``rows_per_chunk`` batch rows at a time (peak memory: one chunk's ``[rows, pos, vocab]`` logits)."""
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
    layers, steps = _lens_grid(hm, cache, hook, layers, steps, block)
    argmax = torch.empty(len(steps), len(layers), *targets.shape, dtype=torch.long)
    prob = torch.empty(len(steps), len(layers), *targets.shape)
    with torch.no_grad():
        for i, step in enumerate(steps):
            for j, layer in enumerate(layers):
                resid = cache.get(hook.format(layer=layer), step, block)
                if resid.shape[:2] != targets.shape:
                    raise ValueError(
                        f"targets {list(targets.shape)} must be [batch, pos] of the cached activations "
                        f"{list(resid.shape[:2])}"
                    )
                for start in range(0, targets.shape[0], rows_per_chunk):
                    part = slice(start, start + rows_per_chunk)
                    logits = unembed(hm, resid[part])
                    argmax[i, j, part] = logits.argmax(-1).cpu()
                    target = targets[part].to(logits.device).unsqueeze(-1)
                    prob[i, j, part] = logits.log_softmax(-1).gather(-1, target).squeeze(-1).exp().cpu()
    return TargetLens(argmax, prob, steps, layers, block, targets.cpu())


@dataclass
class FirstPrediction:
    """Where the lens first predicts each position's final token, in (step, layer) order.

    ``step`` / ``layer``: ``[batch, pos]`` (-1 where it never does); ``per_step``: ``[steps, batch, pos]``,
    the first layer predicting it at each step (-1 where none does); ``stable_step``: ``[batch, pos]``,
    the first step from which the last layer predicts it at every later step.
    """

    step: torch.Tensor
    layer: torch.Tensor
    per_step: torch.Tensor
    stable_step: torch.Tensor


def first_prediction(lens: LogitLens | TargetLens, final_tokens: torch.Tensor) -> FirstPrediction:
    """For each position, the first (step, layer) whose lens argmax is its final token ``[batch, pos]``."""
    hits = lens.argmax == final_tokens.to(lens.argmax.device)  # [S, L, B, P]
    n_steps, n_layers = hits.shape[:2]
    steps = torch.tensor(lens.steps)
    layers = torch.tensor(lens.layers)
    flat = hits.reshape(n_steps * n_layers, *hits.shape[2:])
    any_hit = flat.any(0)
    first = flat.float().argmax(0)  # first True in (step, layer) order
    step = torch.where(any_hit, steps[first // n_layers], torch.full_like(first, -1))
    layer = torch.where(any_hit, layers[first % n_layers], torch.full_like(first, -1))
    per_step_hit = hits.any(1)
    per_step = torch.where(
        per_step_hit, layers[hits.float().argmax(1)], torch.full_like(per_step_hit, -1, dtype=torch.long)
    )
    last = hits[:, -1]  # [S, B, P]
    stays = last.flip(0).cumprod(0).flip(0).bool()  # True from a step on iff true at all later steps
    stable_any = stays.any(0)
    stable = torch.where(stable_any, steps[stays.float().argmax(0)], torch.full_like(first, -1))
    return FirstPrediction(step, layer, per_step, stable)


def settle_steps(trajectory: Trajectory, block: int = 0) -> torch.Tensor:
    """The step from which each position's argmax equals its final token and never changes: ``[batch, pos]``."""
    argmax = trajectory.stack("argmax", block)  # [S, B, P]
    final = argmax[-1]
    same = argmax == final
    stays = same.flip(0).cumprod(0).flip(0).bool()
    return stays.float().argmax(0).long()


__all__ = [
    "FirstPrediction",
    "LogitLens",
    "TargetLens",
    "first_prediction",
    "logit_lens",
    "settle_steps",
    "target_lens",
    "unembed",
]
