"""``filter`` / ``dedup`` / ``serial``: outputs whose positions depend on the data, a planted sequence
smear, and a strictly serial control (token and sequence smearing).

    prompt  filter > 4 : 3 7 1 9 5 2 8      keep the items greater than the threshold, in order
    answer  7 9 5 8      or   _ 7 9 5 8     (with probability 1/2 a spacer ``_`` comes first)
    prompt  dedup : 3 7 3 1 7 9             keep the first occurrence of each item
    answer  3 7 1 9      or   _ 3 7 1 9
    prompt  serial 3 7 1 + 4                x0..x2 = 3 7 1, x[n+1] = x[n-2] + 4 mod 10
    answer  7 1 5 1 5 9 5 9                 eight terms (never a spacer: every position is fixed)

Where an item lands in a ``filter`` or ``dedup`` output depends on how many earlier items survive,
so a model can be sure a token appears before it knows where (**token smear**). The spacer is drawn
independently of the prompt, so both alignments are equally valid answers: the model's best
prediction at every position is a 50/50 mixture of the answer at shift 0 and at shift 1, a
**planted sequence smear** with a known ground truth. ``serial`` is the control where nothing should
smear: its positions never depend on the data.

Ground truth (:func:`truth`): ``alternatives`` (the two valid answers: without and with the
spacer), ``items`` (the answer's items), ``spacer_prob`` (0.5, or 0 for ``serial``), ``focus``
(the positions either alignment writes an item to) and ``round`` for ``serial`` (term n is round
n // 3 + 1: each term is computed from the one three places before).
"""

from __future__ import annotations

import random

from diffinterp.organisms.task import Example, Task

SPACER = "_"
SPACER_PROB = 0.5
SERIAL_TERMS = 8


def _with_spacer(rng: random.Random, items: list[int]) -> str:
    text = " ".join(map(str, items))
    return f"{SPACER} {text}" if rng.random() < SPACER_PROB else text


def _filter(rng: random.Random) -> tuple[str, str]:
    while True:
        items = [rng.randint(0, 9) for _ in range(rng.randint(5, 9))]
        threshold = rng.randint(1, 7)
        kept = [x for x in items if x > threshold]
        if 2 <= len(kept) < len(items):
            break
    return f"filter > {threshold} : {' '.join(map(str, items))}", _with_spacer(rng, kept)


def _dedup(rng: random.Random) -> tuple[str, str]:
    while True:
        items = [rng.randint(0, 9) for _ in range(rng.randint(5, 9))]
        kept = list(dict.fromkeys(items))
        if 2 <= len(kept) < len(items):
            break
    return f"dedup : {' '.join(map(str, items))}", _with_spacer(rng, kept)


def serial_terms(seeds: list[int], step: int, n: int = SERIAL_TERMS) -> list[int]:
    """The ``n`` terms after ``seeds`` of x[n+1] = x[n-2] + step mod 10 (three interleaved progressions)."""
    terms = list(seeds)
    for _ in range(n):
        terms.append((terms[-3] + step) % 10)
    return terms[len(seeds) :]


def _serial(rng: random.Random) -> tuple[str, str]:
    seeds, step = [rng.randint(0, 9) for _ in range(3)], rng.randint(0, 9)
    return f"serial {' '.join(map(str, seeds))} + {step}", " ".join(map(str, serial_terms(seeds, step)))


def items_of(example: Example) -> list[int]:
    """The items of the (spacer-free) answer, recomputed from the prompt."""
    words = example.prompt.split()
    if example.task == "filter":
        threshold, items = int(words[2]), [int(w) for w in words[4:]]
        return [x for x in items if x > threshold]
    if example.task == "dedup":
        return list(dict.fromkeys(int(w) for w in words[2:]))
    if example.task == "serial":
        return serial_terms([int(w) for w in words[1:4]], int(words[5]))
    raise ValueError(f"{example.task!r} is not a smear-family task (filter, dedup, serial)")


def alternatives(example: Example) -> list[str]:
    """The valid answers: the items, and (``filter``/``dedup``) the items after a spacer."""
    text = " ".join(map(str, items_of(example)))
    return [text] if example.task == "serial" else [text, f"{SPACER} {text}"]


def truth(example: Example) -> dict:
    """The ground truth of a smear-family example (fields in the module docstring)."""
    items = items_of(example)
    out = {"alternatives": alternatives(example), "items": items}
    out["spacer_prob"] = 0.0 if example.task == "serial" else SPACER_PROB
    out["focus"] = list(range(len(items) + (example.task != "serial")))  # both alignments' positions
    if example.task == "serial":
        out["round"] = [n // 3 + 1 for n in range(len(items))] + [0]
    return out


def case_of(example: Example) -> str:
    """Task, output length, and whether the written answer has the spacer (``"filter 4, spacer"``)."""
    spaced = example.answer.split()[:1] == [SPACER]
    return f"{example.task} {len(items_of(example))}" + (", spacer" if spaced else "")


FAMILY = {
    "filter": Task(
        "filter",
        _filter,
        "the items above a threshold, maybe after a spacer",
        case_of=case_of,
        truth=truth,
        alternatives=alternatives,
    ),
    "dedup": Task(
        "dedup",
        _dedup,
        "the first occurrence of each item, maybe after a spacer",
        case_of=case_of,
        truth=truth,
        alternatives=alternatives,
    ),
    "serial": Task(
        "serial",
        _serial,
        "three interleaved progressions mod 10 (control)",
        case_of=case_of,
        truth=truth,
        alternatives=alternatives,
    ),
}
