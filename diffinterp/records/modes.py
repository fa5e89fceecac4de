"""Self-conditioning bottleneck modes as they are named in records and on the command line.

``Bottleneck.parse("topk:8")`` reads a mode; ``str()`` writes it back. What each mode does to the
signal is in :mod:`diffinterp.core.bottleneck`; the names live here, below the model layer, so a
record can be checked when it is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BOTTLENECK_MODES = ("continuous", "argmax", "topk:K", "topk:K:renorm", "topp:P", "topp:P:renorm", "sample", "none")
REMAINDERS = ("uniform", "renorm")
#: The settings the paper reports for its token bottleneck.
PAPER_TOPK, PAPER_TOPP = 8, 0.03


@dataclass(frozen=True)
class Bottleneck:
    """A self-conditioning bottleneck mode (see the module docstring): ``mode`` with ``k`` (top-k),
    ``p`` (top-p) and how the mass outside the kept tokens is handled (``remainder``)."""

    mode: str
    k: int | None = None
    p: float | None = None
    remainder: str = "uniform"

    @classmethod
    def parse(cls, spec: str | Bottleneck) -> Bottleneck:
        if isinstance(spec, Bottleneck):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"bottleneck must be a string, one of {', '.join(BOTTLENECK_MODES)}; got {spec!r}")
        if spec in ("continuous", "argmax", "sample", "none"):
            return cls(spec)
        parts = spec.split(":")
        if parts[0] in ("topk", "topp") and len(parts) in (2, 3):
            remainder = parts[2] if len(parts) == 3 else "uniform"
            if remainder not in REMAINDERS:
                raise ValueError(f"bottleneck '{spec}': the remainder rule must be one of {', '.join(REMAINDERS)}")
            if parts[0] == "topk":
                if not parts[1].isdigit() or int(parts[1]) < 1:
                    raise ValueError(f"bottleneck '{spec}': K must be a positive integer, as in 'topk:8'")
                return cls("topk", k=int(parts[1]), remainder=remainder)
            try:
                p = float(parts[1])
            except ValueError:
                p = math.nan
            if not 0 < p <= 1:
                raise ValueError(f"bottleneck '{spec}': P must be a probability in (0, 1], as in 'topp:0.03'")
            return cls("topp", p=p, remainder=remainder)
        raise ValueError(f"unknown bottleneck '{spec}'; valid modes: {', '.join(BOTTLENECK_MODES)}")

    def __str__(self) -> str:
        suffix = ":renorm" if self.remainder == "renorm" else ""
        if self.mode == "topk":
            return f"topk:{self.k}{suffix}"
        if self.mode == "topp":
            return f"topp:{self.p:g}{suffix}"
        return self.mode

    @property
    def feeds_signal(self) -> bool:
        """Whether the decoder receives self-conditioning logits at all."""
        return self.mode != "none"

    @property
    def keeps_tokens(self) -> bool:
        """Whether the state between steps is a set of tokens (every mode but ``continuous``/``none``)."""
        return self.mode not in ("continuous", "none")
