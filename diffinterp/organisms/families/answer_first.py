"""``solve``: an arithmetic chain whose answer is written *before* its scratchpad (retroactive self-correction).

    prompt  solve a=3 b=a+4 c=b*2 d=c-5 ? d
    answer  = 9 : b = 7 c = 1 4 d = 9        the answer first, then every intermediate value

Left to right, the answer needs the whole chain computed latently; a diffusion model can settle the
scratchpad first and write the answer last, so a first guess at the answer can only be corrected
after the reasoning below it settles. Values stay in 0..19, chains have 3 or 4 steps.

Ground truth (:func:`truth`): ``answer_positions`` (canvas positions of the answer's digits),
``scratch_positions`` (of each step's value digits), ``values`` (every step's value),
``round`` (per canvas position: step k's value is round k, the answer is round of the last step + 1),
``focus`` (the answer's positions)
and, for a causal test, :func:`answer_if_last_value` (the answer implied by a corrupted last
scratch value: it is that value, since the answer copies it).
"""

from __future__ import annotations

import random

from diffinterp.organisms.families.toy4 import chain_step
from diffinterp.organisms.task import Example, Task

MAX_VALUE = 19
NAMES = "abcde"


def _chain(rng: random.Random) -> tuple[list[str], list[int]]:
    n_steps = rng.choice((3, 4))
    value = rng.randint(1, 9)
    statements, values = [f"a={value}"], []
    for i in range(1, n_steps + 1):
        op, k, value = chain_step(rng, value, MAX_VALUE)
        statements.append(f"{NAMES[i]}={NAMES[i - 1]}{op}{k}")
        values.append(value)
    return statements, values


def _solve(rng: random.Random) -> tuple[str, str]:
    statements, values = _chain(rng)
    last = NAMES[len(values)]
    scratch = " ".join(f"{NAMES[i + 1]}={v}" for i, v in enumerate(values))
    return f"solve {' '.join(statements)} ? {last}", f"= {values[-1]} : {scratch}"


def chain_values(prompt: str) -> list[int]:
    """The value of every step after ``a``, recomputed from a ``solve`` prompt."""
    words = prompt.split()
    if not words or words[0] != "solve" or "?" not in words:
        raise ValueError(f"not a solve prompt: {prompt!r}")
    statements = words[1 : words.index("?")]
    value = int(statements[0].split("=")[1])
    values = []
    for statement in statements[1:]:
        expression = statement.split("=")[1]
        op, k = expression[1], int(expression[2:])
        value = {"+": value + k, "-": value - k, "*": value * k}[op]
        values.append(value)
    return values


def _tokens(value: int) -> list[str]:
    return list(str(value))


def truth(example: Example) -> dict:
    """The ground truth of a ``solve`` example (fields in the module docstring)."""
    values = chain_values(example.prompt)
    position = 1 + len(_tokens(values[-1]))  # '=' and the answer digits
    answer_positions = list(range(1, position))
    position += 1  # ':'
    scratch_positions, rounds = [], [len(values) + 1] * (1 + len(answer_positions)) + [0]
    for k, value in enumerate(values, start=1):
        position += 2  # name and '='
        digits = list(range(position, position + len(_tokens(value))))
        scratch_positions.append(digits)
        rounds += [k, k] + [k] * len(digits)
        position += len(digits)
    rounds[0] = 0  # the leading '=' is fixed
    return {
        "values": values,
        "answer_positions": answer_positions,
        "scratch_positions": scratch_positions,
        "round": rounds + [0],
        "focus": answer_positions,
    }


def answer_if_last_value(value: int) -> str:
    """The answer the scratchpad implies when its last value reads ``value`` (the answer copies it)."""
    return str(value)


def case_of(example: Example) -> str:
    """The chain length (``"4 steps"``)."""
    return f"{len(chain_values(example.prompt))} steps"


FAMILY = {
    "solve": Task(
        "solve", _solve, "a 3-4 step chain, answer written before its scratchpad", case_of=case_of, truth=truth
    )
}
