"""The autoregressive twin of an organism's DiffusionGemma: ``Gemma4ForCausalLM``, our stand-in for
"Gemma 4", trained with the same text configuration, tokenizer and data (prompt, then the answer).

    import diffinterp as di
    ar = di.load_ar_baseline("toy4")     # ARBaseline(model=Gemma4ForCausalLM, tokenizer=...)
    model, tokenizer = ar                # it unpacks like a (model, tokenizer) pair
    ar.complete(["arith a=3 b=a+4 c=b*2 ? c"])   # ['b = 7 c = 1 4 = 1 4'] (greedy, up to <eos>)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffinterp.core.loading import (
    DEFAULT_MODEL,
    check_loading_info,
    checkpoint_metadata,
    resolve_model_path,
    validate_checkpoint_folder,
)
from diffinterp.organisms.batches import CANVAS_LENGTH, prompt_batch
from diffinterp.organisms.tokenizer import EOS_ID, PAD_ID, decode

AR_MODEL_TYPE = "gemma4_text"
AR_ARCHITECTURE = "Gemma4ForCausalLM"


def bundled_ar_path(name: str | None = None) -> Path:
    """Folder of a bundled organism's AR twin (default: the default model's)."""
    return resolve_model_path(name or DEFAULT_MODEL, kind="ar")


def bundled_diffusion_path(name: str | None = None) -> Path:
    """Folder of a bundled organism's DiffusionGemma (default: the default model)."""
    return resolve_model_path(name or DEFAULT_MODEL)


@dataclass
class ARBaseline:
    """The AR twin: the HF ``Gemma4ForCausalLM`` (eval mode) and its tokenizer."""

    model: Any
    tokenizer: Any
    path: Path | None = None
    max_new_tokens: int = CANVAS_LENGTH  # the organism's canvas: the longest answer + <eos>

    def __iter__(self):
        return iter((self.model, self.tokenizer))

    def complete(self, prompts: list[str], **gen_kwargs: Any) -> list[str]:
        """Greedy completions of task prompts (text up to ``<eos>``, tokens joined by spaces)."""
        gen_kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        return ar_predict(self.model, list(prompts), **gen_kwargs)


@torch.no_grad()
def ar_predict(model, prompts: list[str], **gen_kwargs: Any) -> list[str]:
    """Greedy completions of ``prompts`` by the AR twin (``Gemma4ForCausalLM``): text up to ``<eos>``."""
    ids, mask = prompt_batch(prompts, ar=True)
    ids, mask = ids.to(model.device), mask.to(model.device)
    settings = dict(do_sample=False, max_new_tokens=CANVAS_LENGTH, pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    out = model.generate(input_ids=ids, attention_mask=mask, **{**settings, **gen_kwargs})
    return [decode(row) for row in out[:, ids.shape[1] :]]


def validate_ar_folder(path: Path) -> None:
    """Raise a clear error unless ``path`` is an HF ``Gemma4ForCausalLM`` folder with safetensors."""
    validate_checkpoint_folder(path, AR_MODEL_TYPE, AR_ARCHITECTURE, "load_ar_baseline")


def load_ar_baseline(path: str | Path | None = None, *, device: str | None = None) -> ARBaseline:
    """Load an AR twin as an :class:`ARBaseline`: a bundled organism's by name (``"latin"``; default:
    the default model's) or an HF ``Gemma4ForCausalLM`` folder.

    Raises ``FileNotFoundError``/``ValueError`` naming the problem for a missing, corrupted or
    other-architecture folder.
    """
    from transformers import AutoTokenizer, Gemma4ForCausalLM

    folder = resolve_model_path(path or DEFAULT_MODEL, kind="ar")
    validate_ar_folder(folder)
    try:
        model, info = Gemma4ForCausalLM.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True)
    except Exception as err:  # safetensors raises its own error types on truncated files
        raise ValueError(f"could not load the AR checkpoint in {folder}: {err}") from err
    check_loading_info(info, folder, "AR checkpoint")
    if device is not None:
        model = model.to(device)
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    canvas = checkpoint_metadata(folder).get("canvas_length", CANVAS_LENGTH)
    return ARBaseline(model=model.eval(), tokenizer=tokenizer, path=folder, max_new_tokens=int(canvas))
