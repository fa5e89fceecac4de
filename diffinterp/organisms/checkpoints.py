"""Checkpoint folders of the organisms: HF weights, the tokenizer, the sampler settings, our metadata."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import DiffusionGemmaConfig
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaGenerationConfig,
    EntropyBoundSamplerConfig,
)

from diffinterp.core.configs import tiny_config, tiny_model
from diffinterp.core.loading import METADATA_FILE
from diffinterp.organisms.tokenizer import VOCAB_SIZE, build_tokenizer


def save_tiny_random_checkpoint(folder: str | Path, config: DiffusionGemmaConfig | None = None, seed: int = 0) -> Path:
    """Save a random tiny DiffusionGemma with the toy tokenizer as an HF folder (a test fixture)."""
    folder = Path(folder)
    model = tiny_model(config if config is not None else tiny_config(vocab_size=VOCAB_SIZE), seed=seed)
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_new_tokens=16,
        max_denoising_steps=8,
        t_min=0.4,
        t_max=0.8,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1),
        stability_threshold=1,
        confidence_threshold=0.005,
    )
    model.save_pretrained(str(folder))
    build_tokenizer().save_pretrained(str(folder))
    (folder / METADATA_FILE).write_text(json.dumps({"demo_prompt": "arith a=3 b=a+4 ? b", "trained": False}, indent=2))
    return folder
