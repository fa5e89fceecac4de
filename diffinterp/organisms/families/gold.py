"""``gold`` / ``plain``: a carry chain whose values 3 and 8 are hidden on the canvas (intermediate context).

    prompt  gold 5 1 4 5 4 7 5 2 7 7     ten digits x0 .. x9
    answer  7 2 1 7 2 Gold 1 6 4 7       y[i] = (x[i] + ... + x[9]) mod 10, a 3 or an 8 written ``Gold``
    prompt  plain 5 1 4 5 4 7 5 2 7 7    the control: the same answer with nothing hidden
    answer  7 2 1 7 2 8 1 6 4 7

``carry``'s chain (each answer digit is its right neighbour plus its own prompt digit,
``y[i] = x[i] + y[i+1] mod 10``) with the paper's twist: a value written ``Gold`` is lost from
the canvas (``Gold`` says "3 or 8", one bit short), yet its left neighbour is computed from it. A
model that settles the chain right to left, as ``carry``'s does, must carry that bit across steps
in something other than the written token: a transient digit, or the self-conditioning signal.

Hidden values sit only where the loop must compute them: no ``gold`` or ``plain`` example has a
3 or an 8 among its last :data:`SHALLOW` answer digits (a 4-layer pass sums about four digits, so
``carry``'s step 0 already gets those right; docs/model.md), and every example hides at least one
value at positions 1 .. :data:`N_DIGITS` - :data:`SHALLOW` - 1, whose left neighbour needs it.
``plain`` examples are drawn from the same prompts, so the control differs only in what is written.

Ground truth (:func:`truth`): ``values`` (y), ``hidden_terms`` (the hidden answer positions; a
term is one digit), ``hidden`` (the same positions), ``hidden_values``, ``hidden_digits`` (per
hidden term, its ``(position, digit)`` pairs), ``needed_by`` (for each hidden position, the
positions computed directly from it: its left neighbour), ``round`` (per canvas position, the
length of its dependency chain: ``N_DIGITS - i``; ``<eos>`` 0) and ``focus`` (hidden positions and
those that need them). For ``plain`` the same fields describe what *would* be hidden, so the two
tasks can be compared position by position.
"""

from __future__ import annotations

import random

from diffinterp.organisms.families.carry import suffix_sums
from diffinterp.organisms.task import Example, Task

N_DIGITS = 10
HIDDEN = "Gold"
HIDDEN_VALUES = (3, 8)  # "Gold" leaves one bit unknown: the left neighbour needs it
SHALLOW = 4  # the last answer digits, settled within one pass, never hidden


def is_hidden(value: int) -> bool:
    return value in HIDDEN_VALUES


def _admissible(values: list[int]) -> bool:
    """No hidden value among the shallow digits, and some hidden value that its left neighbour needs."""
    deep = N_DIGITS - SHALLOW
    return not any(map(is_hidden, values[deep:])) and any(map(is_hidden, values[1:deep]))


def _draw(rng: random.Random) -> tuple[list[int], list[int]]:
    while True:
        digits = [rng.randint(0, 9) for _ in range(N_DIGITS)]
        values = suffix_sums(digits)
        if _admissible(values):
            return digits, values


def _prompt(tag: str, digits: list[int]) -> str:
    return f"{tag} {' '.join(map(str, digits))}"


def _gold(rng: random.Random) -> tuple[str, str]:
    digits, values = _draw(rng)
    return _prompt("gold", digits), " ".join(HIDDEN if is_hidden(v) else str(v) for v in values)


def _plain(rng: random.Random) -> tuple[str, str]:
    digits, values = _draw(rng)
    return _prompt("plain", digits), " ".join(map(str, values))


def parse_prompt(prompt: str) -> tuple[str, list[int]]:
    """``(tag, digits)`` of a ``gold`` or ``plain`` prompt."""
    words = prompt.split()
    if (
        len(words) != N_DIGITS + 1
        or words[0] not in ("gold", "plain")
        or not all(w.isdigit() and len(w) == 1 for w in words[1:])
    ):
        raise ValueError(f"not a gold/plain prompt (the tag and {N_DIGITS} single digits): {prompt!r}")
    return words[0], [int(w) for w in words[1:]]


def truth(example: Example) -> dict:
    """The ground truth of a ``gold`` or ``plain`` example (fields in the module docstring)."""
    _, digits = parse_prompt(example.prompt)
    values = suffix_sums(digits)
    hidden = [i for i, v in enumerate(values) if is_hidden(v)]
    needed_by = {i: [i - 1] if i > 0 else [] for i in hidden}
    return {
        "values": values,
        "hidden_terms": hidden,
        "hidden": hidden,
        "hidden_values": [values[i] for i in hidden],
        "hidden_digits": [[(i, values[i])] for i in hidden],
        "needed_by": needed_by,
        "round": [N_DIGITS - i for i in range(N_DIGITS)] + [0],
        "focus": sorted({p for i in hidden for p in [i, *needed_by[i]]}),
    }


def case_of(example: Example) -> str:
    """How many values are hidden (``"2 hidden"``), for ``gold`` and its ``plain`` control alike."""
    return f"{len(truth(example)['hidden_terms'])} hidden"


DESCRIPTION = f"suffix sums mod 10 of {N_DIGITS} digits, the values 3 and 8 written as Gold"
FAMILY = {
    "gold": Task("gold", _gold, DESCRIPTION, case_of=case_of, truth=truth, extra={"hides_values": True}),
    "plain": Task(
        "plain",
        _plain,
        "the gold chain with nothing hidden (control)",
        case_of=case_of,
        truth=truth,
        extra={"hides_values": True},  # what gold would hide, for the comparison
    ),
}
