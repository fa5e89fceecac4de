"""Checkpoint folders of the organisms: HF weights, the tokenizer, the sampler settings, our metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import DiffusionGemmaConfig
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaGenerationConfig,
    EntropyBoundSamplerConfig,
)

from diffinterp.core.configs import tiny_config, tiny_model
from diffinterp.core.loading import METADATA_FILE
from diffinterp.organisms.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, build_tokenizer
from diffinterp.records.files import atomic_folder


@contextmanager
def save_checkpoint(
    folder: str | Path, model, metadata: dict[str, Any], vocab: list[str] | None = None
) -> Iterator[Path]:
    """Write a checkpoint folder atomically: the model (safetensors, config, generation config), the
    tokenizer over ``vocab`` and ``diffinterp.json``; the body adds files to the yielded folder
    before it replaces ``folder`` whole."""
    with atomic_folder(folder) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        build_tokenizer(vocab).save_pretrained(str(staging))
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        yield staging


def save_tiny_random_checkpoint(folder: str | Path, config: DiffusionGemmaConfig | None = None, seed: int = 0) -> Path:
    """Save a random tiny DiffusionGemma with the organisms' tokenizer as an HF folder (a test fixture)."""
    model = tiny_model(config if config is not None else tiny_config(vocab_size=VOCAB_SIZE), seed=seed)
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_new_tokens=16,
        max_denoising_steps=8,
        t_min=0.4,
        t_max=0.8,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1),
        stability_threshold=1,
        confidence_threshold=0.005,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
    )
    with save_checkpoint(folder, model, {"demo_prompt": "carry 1 2 3 4 5 6 7 8 9 0", "trained": False}):
        pass
    return Path(folder)
