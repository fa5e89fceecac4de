"""Self-conditioning bottlenecks: what the next denoising step receives from this one.

``continuous`` is the model's own signal (the tempered logits); the others pass it through an
interpretable token bottleneck, expressed as logits whose softmax is the bottlenecked
distribution: ``argmax`` (one-hot of each position's argmax), ``topk:K`` (top-K renormalised),
``sample`` (one-hot of the sampled token), ``none`` (zero signal, as at a block's first step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BOTTLENECK_MODES = ("continuous", "argmax", "topk:K", "sample", "none")


@dataclass(frozen=True)
class Bottleneck:
    """A self-conditioning bottleneck mode (see the module docstring)."""

    mode: str
    k: int | None = None

    @classmethod
    def parse(cls, spec: str | Bottleneck) -> Bottleneck:
        if isinstance(spec, Bottleneck):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"bottleneck must be a string, one of {', '.join(BOTTLENECK_MODES)}; got {spec!r}")
        if spec in ("continuous", "argmax", "sample", "none"):
            return cls(spec)
        if spec.startswith("topk:"):
            value = spec.split(":", 1)[1]
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"bottleneck '{spec}': K must be a positive integer, as in 'topk:5'")
            return cls("topk", int(value))
        raise ValueError(f"unknown bottleneck '{spec}'; valid modes: {', '.join(BOTTLENECK_MODES)}")

    def __str__(self) -> str:
        return f"topk:{self.k}" if self.mode == "topk" else self.mode

    @property
    def feeds_signal(self) -> bool:
        """Whether the decoder receives self-conditioning logits at all."""
        return self.mode != "none"


def one_hot_logits(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Logits (0 at ``tokens``, -inf elsewhere) whose softmax is exactly the one-hot of ``tokens``."""
    logits = torch.full_like(like, float("-inf"))
    return logits.scatter_(-1, tokens.unsqueeze(-1), 0.0)


def top_k_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each position's ``k`` largest logits and set the rest to -inf (softmax renormalises)."""
    k = min(k, logits.shape[-1])
    values, indices = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


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
    """
    if bottleneck.mode in ("continuous", "none"):
        return signal
    if bottleneck.mode == "argmax":
        new = one_hot_logits(argmax, signal)
    elif bottleneck.mode == "sample":
        new = one_hot_logits(sampled, signal)
    else:
        new = top_k_logits(signal, bottleneck.k)
    if previous is not None and finished_before.any():
        new = torch.where(finished_before[:, None, None], previous, new)
    return new
