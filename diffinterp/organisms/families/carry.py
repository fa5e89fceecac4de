"""``carry``: suffix sums mod 10, a carry chain through every digit (non-chronological reasoning).

    prompt  carry 1 9 9 8 7 7 2 5 1 3
    answer  2 1 2 3 5 8 1 9 4 3          y[i] = (x[i] + x[i+1] + ... + x[n-1]) mod 10

Each answer digit carries the sum of every prompt digit to its right: the leftmost digit is the
total, the rightmost a copy. Written left to right, the first token needs all ten digits summed
latently (the autoregressive twin's problem); one local rule, ``y[i] = x[i] + y[i+1] mod 10``,
computes each digit from its right neighbour, so a model that uses its canvas can settle the answer
right to left. The number of digits is fixed (:data:`N_DIGITS`), so every answer digit sits at a
fixed offset from its prompt digit.

Why not two-operand addition, the textbook carry chain: our 2- and 4-layer DiffusionGemmas learn
its carries in one pass (8 digits: one-pass 88.5% vs 100% full after 3000 steps; multiplication by
one digit: 95% vs 100%), so the loop is not load-bearing there (docs/model.md).

Ground truth (:func:`truth`): ``round`` per canvas position, the length of the dependency chain
(position i depends on i+1 .. n-1: round n - i; ``<eos>`` 0), ``depends_on`` (the positions
each answer digit is computed from: its right neighbour) and ``focus`` (the answer's positions).
"""

from __future__ import annotations

import random

from diffinterp.organisms.task import Example, Task

N_DIGITS = 10
DESCRIPTION = f"suffix sums mod 10 of {N_DIGITS} digits: each answer digit carries every digit to its right"


def suffix_sums(digits: list[int]) -> list[int]:
    """``y[i] = sum(digits[i:]) mod 10``."""
    out, total = [], 0
    for d in reversed(digits):
        total = (total + d) % 10
        out.append(total)
    return out[::-1]


def _carry(rng: random.Random) -> tuple[str, str]:
    digits = [rng.randint(0, 9) for _ in range(N_DIGITS)]
    return f"carry {' '.join(map(str, digits))}", " ".join(map(str, suffix_sums(digits)))


def parse_prompt(prompt: str) -> list[int]:
    words = prompt.split()
    if not words or words[0] != "carry" or not all(w.isdigit() and len(w) == 1 for w in words[1:]):
        raise ValueError(f"not a carry prompt (the tag and single digits): {prompt!r}")
    return [int(w) for w in words[1:]]


def truth(example: Example) -> dict:
    """``round`` (per canvas position; ``<eos>`` 0), ``depends_on`` (per answer position), ``focus``."""
    n = len(parse_prompt(example.prompt))
    return {
        "round": [n - i for i in range(n)] + [0],
        "depends_on": [[i + 1] if i + 1 < n else [] for i in range(n)],
        "focus": list(range(n)),
    }


def case_of(example: Example) -> str:
    """How many distinct carries the chain changes (``"total 2"``: the leading digit's value)."""
    return f"total {example.answer.split()[0]}"


FAMILY = {"carry": Task("carry", _carry, DESCRIPTION, case_of=case_of, truth=truth)}
