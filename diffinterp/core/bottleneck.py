"""Self-conditioning bottlenecks: what the next denoising step receives from this one.

``continuous`` is the model's own signal (the tempered logits of the previous step). The others
pass it through an interpretable token bottleneck, expressed as logits whose softmax is exactly
the bottlenecked distribution:

- ``argmax``: the one-hot of each position's argmax; ``sample``: the one-hot of the sampled token;
- ``topk:K`` - **the paper's token bottleneck**: read the signal as a distribution (its softmax),
  keep each position's K most probable tokens with their probabilities and spread the remaining
  mass uniformly over the other ``V - K`` tokens (the paper's remainder rule, as reported for
  k = 8 in summaries of Engels et al. 2026); ``topk:K:renorm``: keep the K tokens and renormalise
  them, the rest get nothing;
- ``topp:P``: keep every token whose probability is at least P (always at least the most probable
  one), the remaining mass spread uniformly over the others (p = 0.03 in the paper);
  ``topp:P:renorm``: renormalise the kept ones instead;
- ``none``: no signal at all (as at a block's first step).

A top-k / top-p state is a short list of (token, probability) pairs and one remainder; under the
paper's accounting it is interpretable (``diffinterp depth`` shows both conventions).
"""

from __future__ import annotations

import torch

from diffinterp.records.modes import BOTTLENECK_MODES, PAPER_TOPK, PAPER_TOPP, REMAINDERS, Bottleneck

__all__ = [
    "BOTTLENECK_MODES",
    "PAPER_TOPK",
    "PAPER_TOPP",
    "REMAINDERS",
    "Bottleneck",
    "apply_bottleneck",
    "bottleneck_logits",
    "kept_logits",
    "one_hot_logits",
    "top_k_logits",
    "top_p_logits",
]


def one_hot_logits(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Logits (0 at ``tokens``, -inf elsewhere) whose softmax is exactly the one-hot of ``tokens``."""
    logits = torch.full_like(like, float("-inf"))
    return logits.scatter_(-1, tokens.unsqueeze(-1), 0.0)


def kept_logits(probs: torch.Tensor, keep: torch.Tensor, remainder: str = "uniform") -> torch.Tensor:
    """Logits whose softmax keeps ``probs`` at the ``keep`` tokens (a bool mask, same shape) and
    spreads the rest of the mass uniformly over the other tokens (``uniform``) or drops it and
    renormalises the kept ones (``renorm``). Float32; ``-inf`` where a token gets nothing."""
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {', '.join(REMAINDERS)}, got {remainder!r}")
    probs = probs.float()
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    if remainder == "renorm":
        return torch.where(keep, kept.log(), torch.full_like(kept, float("-inf")))
    rest = (1 - kept.sum(-1, keepdim=True)).clamp(min=0)
    others = (~keep).sum(-1, keepdim=True).clamp(min=1)
    return torch.where(keep, kept, (rest / others).expand_as(kept)).log()


def top_k_logits(logits: torch.Tensor, k: int, remainder: str = "uniform") -> torch.Tensor:
    """The ``topk:K`` bottleneck of ``logits`` ``[..., V]`` (module docstring), as ``logits.dtype``."""
    probs = logits.float().softmax(-1)
    index = torch.topk(probs, min(k, probs.shape[-1]), dim=-1).indices
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, index, True)
    return kept_logits(probs, keep, remainder).to(logits.dtype)


def top_p_logits(logits: torch.Tensor, p: float, remainder: str = "uniform") -> torch.Tensor:
    """The ``topp:P`` bottleneck of ``logits`` ``[..., V]``: tokens with probability >= ``p`` (and
    always the most probable one), as ``logits.dtype``."""
    probs = logits.float().softmax(-1)
    keep = probs >= p
    keep.scatter_(-1, probs.argmax(-1, keepdim=True), True)
    return kept_logits(probs, keep, remainder).to(logits.dtype)


def bottleneck_logits(bottleneck: Bottleneck, signal: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """The bottlenecked signal of one step: ``signal`` ``[B, P, V]`` (tempered logits), ``sampled``
    ``[B, P]`` (the sampler's draw). ``continuous`` and ``none`` return the signal unchanged."""
    if bottleneck.mode == "argmax":
        return one_hot_logits(signal.argmax(-1), signal)
    if bottleneck.mode == "sample":
        return one_hot_logits(sampled, signal)
    if bottleneck.mode == "topk":
        return top_k_logits(signal, bottleneck.k, bottleneck.remainder)
    if bottleneck.mode == "topp":
        return top_p_logits(signal, bottleneck.p, bottleneck.remainder)
    return signal


def apply_bottleneck(
    bottleneck: Bottleneck,
    signal: torch.Tensor,
    previous: torch.Tensor | None,
    sampled: torch.Tensor,
    argmax: torch.Tensor,
    finished_before: torch.Tensor,
) -> torch.Tensor:
    """The self-conditioning logits the next step receives.

    ``signal`` is what transformers passes on (tempered logits, frozen for finished rows);
    rows that had finished before this step keep their ``previous`` signal, as in transformers.
    ``argmax`` is the sampler's argmax canvas (the argmax of the same logits).
    """
    if bottleneck.mode in ("continuous", "none"):
        return signal
    new = (
        one_hot_logits(argmax, signal)
        if bottleneck.mode == "argmax"
        else bottleneck_logits(bottleneck, signal, sampled)
    )
    if previous is not None and finished_before.any():
        new = torch.where(finished_before[:, None, None], previous, new)
    return new
