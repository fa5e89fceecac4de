"""``solve``: a running sum whose answer is written *before* its scratchpad (retroactive self-correction).

    prompt  solve 3 8 5 2 7 4 1 6 = ?
    answer  = 6 : 3 1 6 8 5 9 0 6        the total mod 10 first, then every running sum (the scratchpad)

Left to right, the answer needs all eight digits summed latently (the autoregressive twin's
problem); a diffusion model can settle the scratchpad first, one running sum from the one before,
and write the answer last, so a first guess at the answer can only be corrected after the reasoning
below it settles. Every prompt has :data:`N_DIGITS` digits, so each prompt digit sits at a fixed
offset from its running sum (the layout of ``hint``, without the hint slot).

Why not a chain of named statements (``solve a=3 b=a+4 c=b*2 ? c``, the first version): a 4-layer
model computes a 3-4 step chain within one pass (91.0% of final answers equal the step-0 argmax),
and an 8-step signed chain moves every operand's offset, which was not learned in a CPU hour
(docs/model.md).

Ground truth (:func:`truth`): ``values`` (the running sums; the last is the answer),
``answer_positions`` (the answer digit's canvas position), ``scratch_positions`` (each running
sum's positions), ``round`` (per canvas position, the number of prompt digits it sums: running sum
k is round k + 1, the answer :data:`N_DIGITS` + 1, fixed tokens and ``<eos>`` 0), ``focus`` (the
answer's position) and, for a causal test, :func:`answer_if_last_value` (the answer implied by a
corrupted last scratch value: it is that value, since the answer copies it).
"""

from __future__ import annotations

import random

from diffinterp.organisms.families.hint import running_sums
from diffinterp.organisms.task import Example, Task

N_DIGITS = 8
SCRATCH_START = 3  # '=', the answer, ':'


def _solve(rng: random.Random) -> tuple[str, str]:
    digits = [rng.randint(0, 9) for _ in range(N_DIGITS)]
    running = running_sums(digits)
    return f"solve {' '.join(map(str, digits))} = ?", f"= {running[-1]} : {' '.join(map(str, running))}"


def parse_prompt(prompt: str) -> list[int]:
    """The digits of a ``solve`` prompt."""
    words = prompt.split()
    if (
        len(words) != N_DIGITS + 3
        or words[0] != "solve"
        or words[-2:] != ["=", "?"]
        or not all(w.isdigit() and len(w) == 1 for w in words[1:-2])
    ):
        raise ValueError(f"not a solve prompt (solve, {N_DIGITS} single digits, '= ?'): {prompt!r}")
    return [int(w) for w in words[1:-2]]


def chain_values(prompt: str) -> list[int]:
    """The running sums of a ``solve`` prompt (the last is the answer)."""
    return running_sums(parse_prompt(prompt))


def truth(example: Example) -> dict:
    """The ground truth of a ``solve`` example (fields in the module docstring)."""
    values = chain_values(example.prompt)
    n = len(values)
    return {
        "values": values,
        "answer_positions": [1],
        "scratch_positions": [[SCRATCH_START + k] for k in range(n)],
        "round": [0, n + 1, 0] + [k + 1 for k in range(n)] + [0],
        "focus": [1],
    }


def answer_if_last_value(value: int) -> str:
    """The answer the scratchpad implies when its last value reads ``value`` (the answer copies it)."""
    return str(value)


def case_of(example: Example) -> str:
    """The answer's value (``"total 6"``)."""
    return f"total {chain_values(example.prompt)[-1]}"


FAMILY = {
    "solve": Task(
        "solve",
        _solve,
        f"running sums of {N_DIGITS} digits, the total written before its scratchpad",
        case_of=case_of,
        truth=truth,
    )
}
