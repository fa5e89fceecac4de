"""Checking what a caller passes to the model: token ids, generation arguments, dtypes, positions.

Every check raises before anything runs, with a message that names the argument, the bad value and
what would be valid (``unknown generation argument 'record_logit'; did you mean 'record_logits'?``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import torch

#: Arguments of the instrumented sampler on top of DiffusionGemma's own.
SAMPLER_ARGUMENTS = frozenset(
    {"bottleneck", "record_logits", "logits_device", "logits_dtype", "progress", "enable_grad", "replay"}
)
#: What ``generate`` passes on to the model as inputs.
MODEL_INPUTS = frozenset({"attention_mask", "self_conditioning_logits"})
#: ``generate``'s own positional-or-keyword parameters.
GENERATE_PARAMETERS = frozenset(
    {"past_key_values", "streamer", "generation_config", "logits_processor", "stopping_criteria"}
)


def generation_settings() -> frozenset[str]:
    """The fields of ``DiffusionGemmaGenerationConfig`` (what a generation keyword may set)."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    fields = set(DiffusionGemmaGenerationConfig().to_dict()) - {"_from_model_config", "transformers_version"}
    return frozenset(fields)


def valid_generation_arguments() -> frozenset[str]:
    return generation_settings() | SAMPLER_ARGUMENTS | MODEL_INPUTS | GENERATE_PARAMETERS


def check_generation_kwargs(kwargs: Iterable[str], *, extra: Iterable[str] = ()) -> None:
    """Raise on a keyword that no part of generation reads (transformers would ignore it silently)."""
    valid = valid_generation_arguments() | set(extra)
    for name in kwargs:
        if name not in valid:
            close = difflib.get_close_matches(name, sorted(valid), n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise TypeError(
                f"unknown generation argument '{name}'{hint} (valid: DiffusionGemma's generation settings, "
                f"{', '.join(sorted(SAMPLER_ARGUMENTS))})"
            )


def check_input_ids(input_ids: Any, vocab_size: int) -> None:
    """``input_ids`` must be an integer ``[batch, prompt_len]`` tensor of ids in ``[0, vocab_size)``."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"input_ids must be a LongTensor [batch, prompt_len] (or prompt strings with a tokenizer), "
            f"got {type(input_ids).__name__}"
        )
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, prompt_len], got shape {list(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"input_ids must hold integer token ids (torch.long), got {input_ids.dtype}")
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids holds no prompts (batch 0): give at least one")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids has prompts of length 0: every prompt needs at least one token (e.g. <bos>)")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary (valid ids 0..{vocab_size - 1})")


def check_attention_mask(mask: Any, input_ids: torch.Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.shape != input_ids.shape:
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"attention_mask must match input_ids {list(input_ids.shape)}, got {shape}")
    if not bool(mask.bool().any(1).all()):
        raise ValueError("attention_mask masks out every token of some prompt: each prompt needs one visible token")


def as_dtype(value: Any, what: str) -> torch.dtype | None:
    """A torch dtype from a dtype or its name (``"float16"``, ``"torch.bfloat16"``); ``None`` passes."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        found = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(found, torch.dtype):
            return found
    raise TypeError(f"{what} must be a torch dtype or its name (e.g. torch.float16 or 'float16'), got {value!r}")


def check_positions(positions: Iterable[int] | None, canvas_length: int, what: str = "positions") -> None:
    """Canvas positions: non-empty, each in ``[0, canvas_length)``; ``None`` means every position."""
    if positions is None:
        return
    positions = list(positions)
    if not positions:
        raise ValueError(f"{what} is empty: give at least one canvas position, or None for all of them")
    bad = [p for p in positions if not 0 <= p < canvas_length]
    if bad:
        raise IndexError(f"{what} holds {bad[0]}, outside the canvas (valid positions 0..{canvas_length - 1})")
