"""Batched, seeded runs of a prompt set, scored against reference answers.

for batch in run_prompt_set(hm, ps, names_filter="decoder.blocks.*.hook_resid_post"):
    batch.trajectory, batch.cache, batch.correct   # one batched run per chunk of rows
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from diffinterp.core.distributed import map_in_order, world
from diffinterp.core.sampler import generation_kwargs
from diffinterp.organisms.catalog import TASKS
from diffinterp.organisms.task import Example
from diffinterp.organisms.tokenizer import normalize_text
from diffinterp.records.cache import DenoisingCache
from diffinterp.records.decoding import decode_output
from diffinterp.records.trajectory import Trajectory
from diffinterp.studies.prompts import PromptSet, uses_toy_tokenizer

DEFAULT_BATCH_SIZE = 64


def model_info(hm) -> dict[str, Any]:
    """What a metrics file should say about the model: its source, size and sampler settings."""
    text = hm.config.text_config
    gen = hm.model.generation_config
    return {
        "name_or_path": str(getattr(hm.config, "_name_or_path", "") or "in-memory model"),
        "toy_tokenizer": uses_toy_tokenizer(hm),
        "num_layers": int(text.num_hidden_layers),
        "vocab_size": int(text.vocab_size),
        "canvas_length": int(hm.config.canvas_length),
        "parameters": sum(p.numel() for p in hm.model.parameters()),
        "max_denoising_steps": gen.max_denoising_steps,
    }


@dataclass
class StudyBatch:
    """One batched run of a chunk of a prompt set.

    ``rows``: indices into the prompt set; ``prompts``: the chunk itself; ``trajectory`` (and
    ``cache`` when names were requested) of the run; ``predictions``: decoded outputs;
    ``correct``: ``BoolTensor [batch]`` exact match against ``prompts.answers`` (``None`` when
    answers are unknown); ``seed``: the global seed set before the run (reruns reproduce it).
    """

    rows: list[int]
    prompts: PromptSet
    trajectory: Trajectory
    cache: DenoisingCache | None
    predictions: list[str]
    correct: torch.Tensor | None
    seed: int
    reduced: dict[int, Any] = field(default_factory=dict)


def score_predictions(
    hm, predictions: list[str], answers: list[str] | None, task: str | None = None, texts: list[str] | None = None
) -> torch.Tensor | None:
    """Right answers among decoded ``predictions``: ``BoolTensor [n]``, or ``None`` without reference
    ``answers``. For an organism's ``task`` (with the prompt ``texts``) the task decides (its
    normalisation and any valid alternatives); otherwise token lists must match."""
    if answers is None:
        return None
    if task in TASKS and texts is not None and uses_toy_tokenizer(hm):
        judge = TASKS[task]
        examples = [Example(task, text, answer) for text, answer in zip(texts, answers, strict=True)]
        return torch.tensor([judge.accepts(p, e) for p, e in zip(predictions, examples, strict=True)])
    if uses_toy_tokenizer(hm):  # the organisms' tokenization: "b=7" and "b = 7" are the same answer
        return torch.tensor([normalize_text(p) == normalize_text(a) for p, a in zip(predictions, answers, strict=True)])
    return torch.tensor([p.split() == a.split() for p, a in zip(predictions, answers, strict=True)])


def run_prompt_set(
    hm,
    prompts: PromptSet,
    *,
    names_filter=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    reduce_logits: Callable[[torch.Tensor, int], Any] | None = None,
    **gen_kwargs: Any,
) -> Iterator[StudyBatch]:
    """Run ``prompts`` in chunks of ``batch_size``; yield a :class:`StudyBatch` per chunk.

    Chunk ``i`` starting at row ``r`` runs after ``torch.manual_seed(seed + r)`` (the same seeding
    as ``diffinterp eval``, so accuracies agree). With ``names_filter`` the run caches those hooks
    (``run_with_cache``; ``steps=``, ``positions=`` … pass through ``gen_kwargs``); otherwise it is
    a plain ``generate``. ``gen_kwargs`` are generation arguments (``bottleneck=``,
    ``record_logits=`` …); a checkpoint that sets no ``max_new_tokens`` generates one canvas.

    ``reduce_logits(logits [B, P, V], step) -> value`` runs on every decoder step's logits of the
    first block as they are computed, and the batch's ``reduced`` maps step -> value: a per-step
    summary (tokens above a threshold, the EOS probability) without keeping anything
    vocabulary-sized, as the 26B model needs.

    Under torchrun (:mod:`diffinterp.core.distributed`) each process runs every N-th chunk and
    then yields all of them, in order, exactly as one process would.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if hm.model.generation_config.max_new_tokens is None and "max_length" not in gen_kwargs:
        gen_kwargs.setdefault("max_new_tokens", hm.config.canvas_length)  # one canvas unless told
    chunk_kwargs = dict(names_filter=names_filter, seed=seed, reduce_logits=reduce_logits, gen_kwargs=gen_kwargs)
    starts = range(0, len(prompts), batch_size)
    chunks = [list(range(start, min(start + batch_size, len(prompts)))) for start in starts]
    if world()[1] == 1:  # one process: one chunk at a time, nothing held beyond the caller's batch
        for rows in chunks:
            yield _run_chunk(hm, prompts, rows, **chunk_kwargs)
        return
    # torchrun: this process runs every N-th chunk; all processes then see every chunk, in order
    yield from map_in_order(lambda rows: _run_chunk(hm, prompts, rows, **chunk_kwargs), chunks)


def _run_chunk(hm, prompts: PromptSet, rows: list[int], *, names_filter, seed, reduce_logits, gen_kwargs) -> StudyBatch:
    """One chunk of ``prompts``, seeded by its first row (whichever process runs it)."""
    start = rows[0]
    chunk = prompts.subset(rows)
    reduced: dict[int, Any] = {}
    hooks = []
    if reduce_logits is not None:

        def collect(logits, hook, into=reduced):
            if hook.block == 0 and hook.step is not None:
                into[hook.step] = reduce_logits(logits.detach(), hook.step)

        hooks = [("decoder.hook_logits", collect)]
    torch.manual_seed(seed + start)
    with hm.hooks(fwd_hooks=hooks):
        if names_filter is not None:
            trajectory, cache = hm.run_with_cache(
                chunk.input_ids, names_filter, attention_mask=chunk.attention_mask, **gen_kwargs
            )
        else:
            trajectory = hm.generate(chunk.input_ids, attention_mask=chunk.attention_mask, **gen_kwargs)
            cache = None
    new = trajectory.sequences[:, trajectory.prompt_len :]
    predictions = [decode_output(hm, row) for row in new]
    return StudyBatch(
        rows,
        chunk,
        trajectory,
        cache,
        predictions,
        score_predictions(hm, predictions, chunk.answers, chunk.task, chunk.texts),
        seed + start,
        reduced,
    )


def rerun_kwargs(batch: StudyBatch) -> dict[str, Any]:
    """Arguments that re-run ``batch`` with the same random draws (for interventions): pass them
    with the intervention to ``hm.generate`` / ``hm.run_with_hooks``."""

    trajectory = batch.trajectory
    return {
        "attention_mask": trajectory.attention_mask,
        "replay": trajectory,
        "bottleneck": trajectory.bottleneck,
        **generation_kwargs(trajectory),
    }


def generation_options(gen_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Generation arguments as a metrics file records them: numbers and strings as they are, anything
    else (a sampler config) by its text."""

    def plain(value):
        return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)

    return {key: plain(value) for key, value in gen_kwargs.items()}
