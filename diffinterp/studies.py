"""Shared machinery of the case studies: prompt sets, batched runs, canvas helpers, output files.

A case study (``case_studies/NAME.py``) is ``run(model, *, n, out_dir, ...) -> metrics``; it
chooses prompts with :func:`prompt_set`, runs them with :func:`run_prompt_set` (batched, seeded,
optionally caching activations), computes its metrics from the records with pure functions,
aggregates with :mod:`diffinterp.stats`, and writes through a :class:`StudyOutput`::

    ps = prompt_set(hm, "arith", n=100)                 # toy tasks, or seeded random prompts
    for batch in run_prompt_set(hm, ps, names_filter="decoder.blocks.*.hook_resid_post"):
        batch.trajectory, batch.cache, batch.correct   # one batched run per chunk of rows
    with StudyOutput("out/my_study") as out:
        out.figure(fig, "settling")                    # PNG + SVG, listed in metrics["figures"]
        out.metrics.update(summary={...}, per_task={...})
                                                       # metrics.json written atomically on exit

Nothing here knows a task's semantics beyond what the toy tasks declare: on a model without the
toy tokenizer (the real 26B checkpoint, or a random model) the prompts are the user's or seeded
random token ids, answers are unknown (``correct`` is ``None``) and every study still runs.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffinterp.cache import DenoisingCache
from diffinterp.trajectory import Trajectory

RANDOM_TASK = "random"
DEFAULT_BATCH_SIZE = 64


# ------------------------------------------------------------------------------- prompt sets
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
    """True iff ``hm``'s tokenizer is the toy tasks' tokenizer (so the toy tasks apply)."""
    from diffinterp.toy.tokenizer import VOCAB

    tokenizer = getattr(hm, "tokenizer", None)
    if tokenizer is None:
        return False
    vocab = tokenizer.get_vocab()
    return len(vocab) == len(VOCAB) and all(vocab.get(token) == i for i, token in enumerate(VOCAB))


def toy_prompt_set(hm, task: str, n: int) -> PromptSet:
    """The first ``n`` held-out examples of a toy task (``diffinterp.toy.tasks``)."""
    from diffinterp.toy import tasks as toy_tasks

    examples = toy_tasks.test_set(task, n)
    texts = [example.prompt for example in examples]
    ids, mask = hm.to_tokens(texts)
    labels = [toy_tasks.hidden_property(example) for example in examples]
    return PromptSet(task, ids, mask, texts, [example.answer for example in examples], labels if any(labels) else None)


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


def prompt_set(hm, task: str, n: int, *, seed: int = 0) -> PromptSet:
    """Prompts for ``task``: the toy task's held-out split when ``hm`` speaks the toy tokenizer,
    otherwise seeded random prompts (see :func:`random_prompt_set`)."""
    from diffinterp.toy.tasks import TASKS

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if task not in (*TASKS, RANDOM_TASK):
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join((*TASKS, RANDOM_TASK))}")
    if task != RANDOM_TASK and uses_toy_tokenizer(hm):
        return toy_prompt_set(hm, task, n)
    return random_prompt_set(hm.config.text_config.vocab_size, n, seed=seed, device=hm.model.device)


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


# ------------------------------------------------------------------------------- running
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


def special_ids(hm) -> tuple[int, int]:
    """``(eos_id, pad_id)`` of ``hm``'s generation config (eos falls back to the config's)."""
    gen = hm.model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else hm.config.text_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    pad = gen.pad_token_id if gen.pad_token_id is not None else hm.config.text_config.pad_token_id
    return int(eos), int(pad if pad is not None else eos)


def output_tokens(tokens: torch.Tensor, eos_id: int, pad_id: int) -> list[int]:
    """The content of one generated row: ids up to the first ``eos_id``, pads dropped."""
    out = []
    for token in tokens.tolist():
        if token == eos_id:
            break
        if token != pad_id:
            out.append(token)
    return out


def decode_output(hm, tokens: torch.Tensor) -> str:
    """One generated row as text: tokens up to EOS joined by spaces (ids as ``<id>`` without a tokenizer)."""
    eos, pad = special_ids(hm)
    ids = output_tokens(tokens, eos, pad)
    if hm.tokenizer is None:
        return " ".join(f"<{i}>" for i in ids)
    return " ".join(hm.tokenizer.convert_ids_to_tokens(ids))


def score_predictions(hm, predictions: list[str], answers: list[str] | None) -> torch.Tensor | None:
    """Exact match of decoded ``predictions`` against reference ``answers``: ``BoolTensor [n]``, or
    ``None`` without answers (toy tokenizer: the toy tasks' normalisation; otherwise token lists)."""
    if answers is None:
        return None
    if uses_toy_tokenizer(hm):
        from diffinterp.toy.tasks import normalize

        return torch.tensor([normalize(p) == normalize(a) for p, a in zip(predictions, answers, strict=True)])
    return torch.tensor([p.split() == a.split() for p, a in zip(predictions, answers, strict=True)])


def run_prompt_set(
    hm,
    prompts: PromptSet,
    *,
    names_filter=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    **gen_kwargs: Any,
) -> Iterator[StudyBatch]:
    """Run ``prompts`` in chunks of ``batch_size``; yield a :class:`StudyBatch` per chunk.

    Chunk ``i`` starting at row ``r`` runs after ``torch.manual_seed(seed + r)`` (the same seeding
    as ``diffinterp eval``, so accuracies agree). With ``names_filter`` the run caches those hooks
    (``run_with_cache``; ``steps=``, ``positions=`` … pass through ``gen_kwargs``); otherwise it is
    a plain ``generate``. ``gen_kwargs`` are generation arguments (``bottleneck=``,
    ``record_logits=`` …); a checkpoint that sets no ``max_new_tokens`` generates one canvas.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if hm.model.generation_config.max_new_tokens is None and "max_length" not in gen_kwargs:
        gen_kwargs.setdefault("max_new_tokens", hm.config.canvas_length)  # one canvas unless told
    for start in range(0, len(prompts), batch_size):
        rows = list(range(start, min(start + batch_size, len(prompts))))
        chunk = prompts.subset(rows)
        torch.manual_seed(seed + start)
        if names_filter is not None:
            trajectory, cache = hm.run_with_cache(
                chunk.input_ids, names_filter, attention_mask=chunk.attention_mask, **gen_kwargs
            )
        else:
            trajectory, cache = hm.generate(chunk.input_ids, attention_mask=chunk.attention_mask, **gen_kwargs), None
        new = trajectory.sequences[:, trajectory.prompt_len :]
        predictions = [decode_output(hm, row) for row in new]
        yield StudyBatch(
            rows, chunk, trajectory, cache, predictions, score_predictions(hm, predictions, chunk.answers), seed + start
        )


def rerun_kwargs(batch: StudyBatch) -> dict[str, Any]:
    """Arguments that re-run ``batch`` with the same random draws (for interventions): pass them
    with the intervention to ``hm.generate`` / ``hm.run_with_hooks``."""
    from diffinterp.patching import generation_kwargs

    trajectory = batch.trajectory
    return {
        "attention_mask": trajectory.attention_mask,
        "replay": trajectory,
        "bottleneck": trajectory.bottleneck,
        **generation_kwargs(trajectory),
    }


# ------------------------------------------------------------------------------- output
def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temporary file and ``os.replace``: the file is complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (see :func:`write_text_atomic`); NaN becomes ``null``
    (strict JSON has no NaN)."""
    return write_text_atomic(path, json.dumps(_finite(data), indent=2, default=_json_default) + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return _finite(value.tolist())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _finite(value.tolist())
    raise TypeError(f"cannot write {type(value).__name__} to metrics.json")


@dataclass
class StudyOutput:
    """The output folder of one study run: figures as they are made, ``metrics.json`` at the end.

    Use as a context manager: ``metrics.json`` is written on a clean exit (with ``figures``, the
    saved figure paths relative to the folder), and not at all when the body raises, so a failed
    run never leaves metrics that look complete.
    """

    out_dir: str | Path
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)

    def __enter__(self) -> StudyOutput:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.write()
        return False

    def figure(self, fig, name: str) -> list[Path]:
        """Save ``fig`` as ``name.png`` and ``name.svg`` in the folder (closing it); record the PNG."""
        from diffinterp.plotting import save_figure

        paths = save_figure(fig, self.out_dir / name)
        self.figures.append(f"{name}.png")
        return paths

    def write(self) -> Path:
        self.metrics["figures"] = list(self.figures)
        return write_json_atomic(self.out_dir / "metrics.json", self.metrics)


__all__ = [
    "PromptSet",
    "StudyBatch",
    "StudyOutput",
    "decode_output",
    "model_info",
    "output_tokens",
    "prompt_set",
    "random_prompt_set",
    "rerun_kwargs",
    "run_prompt_set",
    "score_predictions",
    "special_ids",
    "toy_prompt_set",
    "uses_toy_tokenizer",
    "write_json_atomic",
    "write_text_atomic",
]
