"""``gold`` / ``plain``: a recurrence whose terms ending in 3 are hidden on the canvas (intermediate context).

    prompt  gold 4 7 1 2                 x0 = 47, x1 = 12; x[n+1] = x[n] + x[n-1] mod 100
    answer  5 9 7 1 Gold Gold 0 1 ...    x2 .. x9, two digit tokens each; a term ending in 3 is
                                         written ``Gold Gold``, so the canvas loses the value that the
                                         next two terms are computed from
    prompt  plain 4 7 1 2                the control: the same sequence with nothing hidden
    answer  5 9 7 1 3 0 0 1 ...

Every ``gold`` example hides at least one term that a later term needs, and ``plain`` examples are
drawn from the same prompts (the control differs only in what is written). The paper's case: the
model writes the number as scratch, uses it for later terms, then overwrites it with ``Gold``.

Ground truth (:func:`truth`): ``values`` (x2..x9), ``hidden_terms`` (indices n of hidden terms),
``hidden`` (their canvas positions), ``needed_by`` (for each hidden term, the canvas positions of
the terms n+1 and n+2 computed from it), ``round`` (per canvas position, the number of chained
additions from the prompt: term n is round n - 1) and ``focus`` (hidden positions and those of the
terms that need them). For ``plain`` the same fields describe what
*would* be hidden, so the two tasks can be compared position by position.
"""

from __future__ import annotations

import random

from diffinterp.organisms.task import Example, Task

N_TERMS = 8  # x2 .. x9 on the canvas
HIDDEN = "Gold"
MODULUS = 100


def sequence(x0: int, x1: int, n_terms: int = N_TERMS) -> list[int]:
    """x2 .. x(n_terms + 1) of x[n+1] = x[n] + x[n-1] mod 100."""
    terms = [x0, x1]
    for _ in range(n_terms):
        terms.append((terms[-1] + terms[-2]) % MODULUS)
    return terms[2:]


def is_hidden(value: int) -> bool:
    return value % 10 == 3


def _digits(value: int) -> str:
    return f"{value // 10} {value % 10}"


def _needed_hidden(values: list[int]) -> bool:
    """Whether some hidden term has a later term computed from it (hidden terms other than the last)."""
    return any(is_hidden(v) for v in values[:-1])


def _draw(rng: random.Random) -> tuple[int, int, list[int]]:
    while True:
        x0, x1 = rng.randrange(MODULUS), rng.randrange(MODULUS)
        values = sequence(x0, x1)
        if _needed_hidden(values):
            return x0, x1, values


def _prompt(tag: str, x0: int, x1: int) -> str:
    return f"{tag} {_digits(x0)} {_digits(x1)}"


def _gold(rng: random.Random) -> tuple[str, str]:
    x0, x1, values = _draw(rng)
    written = [f"{HIDDEN} {HIDDEN}" if is_hidden(v) else _digits(v) for v in values]
    return _prompt("gold", x0, x1), " ".join(written)


def _plain(rng: random.Random) -> tuple[str, str]:
    x0, x1, values = _draw(rng)
    return _prompt("plain", x0, x1), " ".join(_digits(v) for v in values)


def parse_prompt(prompt: str) -> tuple[str, int, int]:
    """``(tag, x0, x1)`` of a ``gold`` or ``plain`` prompt."""
    words = prompt.split()
    if len(words) != 5 or words[0] not in ("gold", "plain") or not all(w.isdigit() for w in words[1:]):
        raise ValueError(f"not a gold/plain prompt (tag and four digits): {prompt!r}")
    d = [int(w) for w in words[1:]]
    return words[0], 10 * d[0] + d[1], 10 * d[2] + d[3]


def truth(example: Example) -> dict:
    """The ground truth of a ``gold`` or ``plain`` example (fields in the module docstring)."""
    _, x0, x1 = parse_prompt(example.prompt)
    values = sequence(x0, x1)
    hidden_terms = [i for i, v in enumerate(values) if is_hidden(v)]
    positions = lambda i: [2 * i, 2 * i + 1]  # noqa: E731 - canvas positions of term x(i+2)
    needed_by = {i: [p for j in (i + 1, i + 2) if j < len(values) for p in positions(j)] for i in hidden_terms}
    return {
        "values": values,
        "hidden_terms": hidden_terms,
        "hidden": [p for i in hidden_terms for p in positions(i)],
        "hidden_values": [values[i] for i in hidden_terms],
        "needed_by": needed_by,
        "round": [i + 1 for i in range(len(values)) for _ in range(2)] + [0],
        "focus": sorted({p for i in hidden_terms for p in positions(i) + needed_by[i]}),
    }


def case_of(example: Example) -> str:
    """How many terms are hidden (``"2 hidden"``), for ``gold`` and its ``plain`` control alike."""
    return f"{len(truth(example)['hidden_terms'])} hidden"


FAMILY = {
    "gold": Task(
        "gold",
        _gold,
        "x[n+1] = x[n] + x[n-1] mod 100, terms ending in 3 written as Gold",
        case_of=case_of,
        truth=truth,
        extra={"hides_values": True},
    ),
    "plain": Task(
        "plain",
        _plain,
        "the gold recurrence with nothing hidden (control)",
        case_of=case_of,
        truth=truth,
        extra={"hides_values": True},  # what gold would hide, for the comparison
    ),
}
