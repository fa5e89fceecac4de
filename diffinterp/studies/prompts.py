"""Prompt sets for case studies: an organism's held-out split, or seeded random prompts.

    ps = prompt_set(hm, "arith", n=100)      # toy tasks, or seeded random prompts for other models

Nothing here knows a task's semantics beyond what the organisms declare: on a model without the
toy tokenizer (the real 26B checkpoint, or a random model) the prompts are seeded random token ids,
answers are unknown and every study still runs.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffinterp.organisms.catalog import TASKS, organism_of
from diffinterp.organisms.catalog import task as catalog_task
from diffinterp.organisms.tokenizer import VOCAB

RANDOM_TASK = "random"


@dataclass
class PromptSet:
    """Prompts of one task, tokenised and left-padded.

    ``input_ids`` / ``attention_mask``: ``[n, prompt_len]``. ``texts``, ``answers`` (reference
    outputs, for exact match) and ``labels`` (a hidden property, e.g. the monitorability task's
    rule) are lists of length ``n`` or ``None`` where unknown.
    """

    task: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    texts: list[str] | None = None
    answers: list[str] | None = None
    labels: list[str] | None = None

    def __post_init__(self):
        n = self.input_ids.shape[0]
        if self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(
                f"attention_mask {list(self.attention_mask.shape)} must match input_ids {list(self.input_ids.shape)}"
            )
        for name in ("texts", "answers", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries for {n} prompts: give one per prompt")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def subset(self, rows: Sequence[int]) -> PromptSet:
        """The prompts at ``rows`` (padding columns shared by all of them are dropped)."""
        rows = list(rows)
        ids, mask = self.input_ids[rows], self.attention_mask[rows]
        keep = mask.any(0)
        first = int(keep.float().argmax()) if keep.any() else 0
        pick = lambda values: None if values is None else [values[i] for i in rows]  # noqa: E731
        return PromptSet(
            self.task, ids[:, first:], mask[:, first:], pick(self.texts), pick(self.answers), pick(self.labels)
        )


def uses_toy_tokenizer(hm) -> bool:
    """True iff ``hm``'s tokenizer is an organisms' tokenizer (its vocabulary a prefix of theirs), so
    the organisms' task prompts mean to it what they say."""
    tokenizer = getattr(hm, "tokenizer", None)
    if tokenizer is None:
        return False
    vocab = tokenizer.get_vocab()
    return len(vocab) <= len(VOCAB) and all(vocab.get(token) == i for i, token in enumerate(VOCAB[: len(vocab)]))


def model_tasks(hm) -> tuple[str, ...]:
    """The tasks ``hm`` was trained on (its organism's, from the checkpoint's metadata), or ``()`` for
    a model diffinterp knows nothing about (then studies run on seeded random prompts)."""
    spec = organism_of(hm)
    if spec is not None and uses_toy_tokenizer(hm):
        return spec.tasks
    return ()


def toy_prompt_set(hm, task: str, n: int, *, offset: int = 0) -> PromptSet:
    """Held-out examples ``offset .. offset + n - 1`` of an organism's task (their prompts, answers and
    hidden labels)."""
    examples = catalog_task(task).test_set(n, offset=offset)
    texts = [example.prompt for example in examples]
    ids, mask = hm.to_tokens(texts)
    spec = catalog_task(task)
    labels = [spec.hidden_property(example) for example in examples] if spec.hidden_property else None
    answers = [example.answer for example in examples]
    return PromptSet(task, ids, mask, texts, answers, labels if labels and any(labels) else None)


def random_prompt_set(
    vocab_size: int, n: int, *, seed: int = 0, min_len: int = 3, max_len: int = 8, low_id: int = 4, device=None
) -> PromptSet:
    """``n`` seeded random prompts of ``min_len..max_len`` token ids in ``[low_id, vocab_size)``, left-padded.

    For models whose tasks diffinterp does not know (a random model, a checkpoint without the toy
    tokenizer): the studies then measure the sampler's dynamics with no reference answers. Each
    prompt gets a binary label (``"a"``/``"b"``: whether its first token id is even), so the label
    machinery runs end to end.
    """
    if vocab_size <= low_id:
        raise ValueError(f"vocab_size {vocab_size} leaves no token ids at or above low_id={low_id}")
    rng = random.Random(f"diffinterp-random-prompts-{seed}")
    lengths = [rng.randint(min_len, max_len) for _ in range(n)]
    width = max(lengths, default=min_len)
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    labels = []
    for row, length in enumerate(lengths):
        tokens = [rng.randrange(low_id, vocab_size) for _ in range(length)]
        ids[row, width - length :] = torch.tensor(tokens)
        mask[row, width - length :] = 1
        labels.append("a" if tokens[0] % 2 == 0 else "b")
    return PromptSet(RANDOM_TASK, ids.to(device), mask.to(device), labels=labels)


def prompt_set(hm, task: str, n: int, *, seed: int = 0, offset: int = 0) -> PromptSet:
    """Prompts for ``task``: its held-out split when ``hm`` speaks the organisms' tokenizer (examples
    ``offset ..``), otherwise seeded random prompts (see :func:`random_prompt_set`)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if task not in (*TASKS, RANDOM_TASK):
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join((*TASKS, RANDOM_TASK))}")
    if task != RANDOM_TASK and uses_toy_tokenizer(hm):
        return toy_prompt_set(hm, task, n, offset=offset)
    return random_prompt_set(hm.config.text_config.vocab_size, n, seed=seed, device=hm.model.device)


def training_prompt_batches(hm, batch_size: int, *, seed: int = 0, tasks: Sequence[str] | None = None):
    """An endless stream of ``(input_ids, attention_mask)`` batches of fresh training-split prompts of
    the model's tasks (mixed in turn), for training on activations (SAEs); seeded random prompts
    for a model whose tasks diffinterp does not know. Never the held-out split."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tasks = list(tasks) if tasks else list(model_tasks(hm))
    rng = random.Random(f"diffinterp-training-prompts-{seed}")
    for index in itertools.count():
        if not tasks:
            batch = random_prompt_set(hm.config.text_config.vocab_size, batch_size, seed=seed * 1_000_003 + index,
                                      device=hm.model.device)  # fmt: skip
            yield batch.input_ids, batch.attention_mask
            continue
        spec = catalog_task(tasks[index % len(tasks)])
        yield hm.to_tokens([spec.sample(rng, split="train").prompt for _ in range(batch_size)])
