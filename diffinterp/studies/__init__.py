"""Shared machinery of the case studies: prompt sets, batched runs, output folders, reports, the registry.

A case study (a module with ``run(model, *, n, out_dir, ...) -> metrics``, registered in the
``diffinterp.case_studies`` entry-point group) chooses prompts with :func:`prompt_set`, runs them
with :func:`run_prompt_set` (batched, seeded, optionally caching activations), computes its
metrics from the records with pure functions (:mod:`diffinterp.phenomena`), aggregates with
:mod:`diffinterp.stats`, and writes through a :class:`StudyOutput`::

    ps = prompt_set(hm, "arith", n=100)                 # organism tasks, or seeded random prompts
    for batch in run_prompt_set(hm, ps, names_filter="decoder.blocks.*.hook_resid_post"):
        batch.trajectory, batch.cache, batch.correct   # one batched run per chunk of rows
    with StudyOutput("out/my_study") as out:
        out.figure(fig, "settling")                    # PNG + SVG, listed in metrics["figures"]
        out.metrics.update(summary={...}, per_task={...})
                                                       # metrics.json written atomically on exit
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Imported on first use (PEP 562): the CLI lists the registry's studies without loading torch.
_EXPORTS = {
    **dict.fromkeys(("decode_output", "output_tokens", "special_ids"), "diffinterp.records.decoding"),
    **dict.fromkeys(("write_json_atomic", "write_text_atomic"), "diffinterp.records.files"),
    "StudyOutput": "diffinterp.studies.output",
    **dict.fromkeys(
        (
            "RANDOM_TASK",
            "PromptSet",
            "model_tasks",
            "prompt_set",
            "random_prompt_set",
            "toy_prompt_set",
            "training_prompt_batches",
            "uses_toy_tokenizer",
        ),
        "diffinterp.studies.prompts",
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "DEFAULT_BATCH_SIZE",
            "StudyBatch",
            "generation_options",
            "model_info",
            "rerun_kwargs",
            "run_prompt_set",
            "score_predictions",
        ),
        "diffinterp.studies.runs",
    ),  # fmt: skip
}

if TYPE_CHECKING:
    from diffinterp.records.decoding import decode_output, output_tokens, special_ids
    from diffinterp.records.files import write_json_atomic, write_text_atomic
    from diffinterp.studies.output import StudyOutput
    from diffinterp.studies.prompts import (
        RANDOM_TASK,
        PromptSet,
        model_tasks,
        prompt_set,
        random_prompt_set,
        toy_prompt_set,
        uses_toy_tokenizer,
    )
    from diffinterp.studies.runs import (
        DEFAULT_BATCH_SIZE,
        StudyBatch,
        generation_options,
        model_info,
        rerun_kwargs,
        run_prompt_set,
        score_predictions,
    )


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffinterp.studies' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "RANDOM_TASK",
    "PromptSet",
    "StudyBatch",
    "StudyOutput",
    "decode_output",
    "generation_options",
    "model_info",
    "model_tasks",
    "output_tokens",
    "prompt_set",
    "random_prompt_set",
    "rerun_kwargs",
    "run_prompt_set",
    "score_predictions",
    "special_ids",
    "toy_prompt_set",
    "training_prompt_batches",
    "uses_toy_tokenizer",
    "write_json_atomic",
    "write_text_atomic",
]
