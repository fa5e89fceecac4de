"""Tasks: seeded generators of ``(prompt, answer)`` examples, held-out splits, exact-match scoring.

A :class:`Task` names a generator and what a study may ask of its examples: the sub-case of an
example (for per-case accuracy tables), a hidden property (for monitors) and its **ground truth**
(for checking a finding: the round at which each answer position can be known, the positions whose
hidden value is needed later, the valid alternative answers ...). Every ground-truth function is a
pure function of the example's text, so it can be checked by brute force.

Held-out split: an example belongs to the test split iff a hash of its prompt falls in the test
bucket (1 in 10), so training and test are disjoint by construction, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffinterp.organisms.tokenizer import normalize_text

TEST_BUCKETS = 10  # 1 in TEST_BUCKETS prompts is held out
TEST_SEED = 12345
DEFAULT_TEST_SIZE = 400


@dataclass(frozen=True)
class Example:
    """One ``(prompt, answer)`` pair of ``task``; the canvas holds the answer's tokens, ``<eos>``, pads."""

    task: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Task:
    """A task family member: ``generate(rng) -> (prompt, answer)`` and what studies can ask of it.

    ``truth(example) -> dict``: the ground truth of one example (keys documented by the family);
    ``case_of(example) -> str``: its sub-case; ``hidden_property(example) -> str | None``: a
    property a monitor should detect from the output; ``accepts(prediction, example) -> bool``:
    exact match, unless the task has several valid answers (then any of them).
    """

    name: str
    generate: Callable[[random.Random], tuple[str, str]]
    description: str = ""
    case_of: Callable[[Example], str] | None = None
    hidden_property: Callable[[Example], str | None] | None = None
    truth: Callable[[Example], dict[str, Any]] | None = None
    alternatives: Callable[[Example], list[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def sample(self, rng: random.Random, *, split: str = "train") -> Example:
        """One example from ``split`` (``train`` or ``test``), drawn with ``rng``."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        want_test = split == "test"
        while True:
            prompt, answer = self.generate(rng)
            if is_test_prompt(prompt) == want_test:
                return Example(self.name, prompt, answer)

    def test_set(self, n: int = DEFAULT_TEST_SIZE, *, offset: int = 0) -> list[Example]:
        """The fixed held-out set: examples ``offset .. offset + n - 1`` of a seeded stream of distinct
        test-split examples (stable across runs and machines)."""
        if n < 0 or offset < 0:
            raise ValueError(f"n and offset must be >= 0, got n={n}, offset={offset}")
        rng = random.Random(f"{TEST_SEED}-{self.name}")
        seen: set[str] = set()
        out: list[Example] = []
        for _ in range(200 * (n + offset) + 100):
            example = self.sample(rng, split="test")
            if example.prompt not in seen:
                seen.add(example.prompt)
                out.append(example)
                if len(out) == n + offset:
                    break
        return out[offset:]

    def accepts(self, prediction: str, example: Example) -> bool:
        """Whether ``prediction`` (decoded output up to ``<eos>``) is a right answer to ``example``."""
        valid = [example.answer] if self.alternatives is None else self.alternatives(example)
        got = normalize_text(prediction)
        return any(got == normalize_text(answer) for answer in valid)


def is_test_prompt(prompt: str) -> bool:
    """True iff ``prompt`` belongs to the held-out split (a stable hash, independent of seeds)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return int.from_bytes(digest[:4], "little") % TEST_BUCKETS == 0


def mixture_stream(tasks: Sequence[Task], weights: Sequence[float], seed: int) -> Iterator[Example]:
    """An endless, seeded stream of training examples, ``tasks`` mixed by ``weights``."""
    if len(tasks) != len(weights) or not tasks:
        raise ValueError(f"give one weight per task: {len(tasks)} tasks, {len(weights)} weights")
    rng = random.Random(seed)
    while True:
        task = rng.choices(list(tasks), weights=list(weights))[0]
        yield task.sample(rng, split="train")
