"""DiffusionGemma configs: tiny random ones for tests, the released 26B-A4B structure, meta models.

Everything here returns the *unmodified* transformers objects (``DiffusionGemmaConfig``,
``DiffusionGemmaForBlockDiffusion``).

- ``tiny_config(**overrides)``: small random configs for tests (text stack + a one-layer vision stub,
  since transformers always builds the vision tower).
- ``real_config()``: the released 26B-A4B structure, shipped as package data
  (``assets/reference/``); build it on the ``meta`` device for real-size shapes with no memory.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import torch
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
)
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaGenerationConfig,
    EntropyBoundSamplerConfig,
)

# A vision tower is always built; this keeps it negligible in tiny and text-only models.
MINIMAL_VISION_CONFIG: dict[str, Any] = {
    "model_type": "gemma4_vision",
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "head_dim": 8,
}

_TINY_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "global_head_dim": 32,
    "num_global_key_value_heads": 1,
    "sliding_window": 8,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "num_experts": 4,
    "top_k_experts": 2,
    "moe_intermediate_size": 32,
    "max_position_embeddings": 1024,
    "attention_k_eq_v": True,
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": 30.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
_TOP_LEVEL_KEYS = {"canvas_length", "boi_token_id", "eoi_token_id", "image_token_id", "tie_word_embeddings"}


def tiny_text_config() -> dict[str, Any]:
    """The text-stack settings of :func:`tiny_config` as a dict (for a ``Gemma4TextConfig`` twin)."""
    return dict(_TINY_TEXT_DEFAULTS)


def tiny_config(**overrides: Any) -> DiffusionGemmaConfig:
    """A small random-init DiffusionGemma config for tests.

    Keyword overrides go to the text config, except ``canvas_length`` and the special image-token ids,
    which are top-level. ``num_hidden_layers`` without ``layer_types`` gets a 2 sliding : 1 full
    pattern ending in a full layer (transformers forces the last layer to be full).
    """
    text = dict(_TINY_TEXT_DEFAULTS)
    top: dict[str, Any] = {"canvas_length": 8}
    for key, value in overrides.items():
        (top if key in _TOP_LEVEL_KEYS else text)[key] = value
    if "num_hidden_layers" in overrides and "layer_types" not in overrides:
        n = text["num_hidden_layers"]
        text["layer_types"] = [
            "full_attention" if (i + 1) % 3 == 0 or i == n - 1 else "sliding_attention" for i in range(n)
        ]
    if len(text["layer_types"]) != text["num_hidden_layers"]:
        raise ValueError(
            f"layer_types has {len(text['layer_types'])} entries but num_hidden_layers is "
            f"{text['num_hidden_layers']}; give one layer type per layer"
        )
    # Keep image special tokens outside the tiny vocabulary so they never occur in prompts.
    top.setdefault("boi_token_id", text["vocab_size"] + 1)
    top.setdefault("eoi_token_id", text["vocab_size"] + 2)
    top.setdefault("image_token_id", text["vocab_size"] + 3)
    return DiffusionGemmaConfig(text_config=text, vision_config=dict(MINIMAL_VISION_CONFIG), **top)


def real_pattern_tiny_config(vocab_size: int = 200, **overrides: Any) -> DiffusionGemmaConfig:
    """A tiny config with the released 26B-A4B's layer pattern (its ``layer_types``: 30 layers,
    5 sliding : 1 full) and its own vocabulary size (default 200, unlike the toy tokenizer's 64):
    a shape-level stand-in for the real model that runs in seconds on a CPU."""
    layer_types = list(real_config().text_config.layer_types)
    settings: dict[str, Any] = dict(
        num_hidden_layers=len(layer_types),
        layer_types=layer_types,
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        moe_intermediate_size=16,
        num_experts=8,
        top_k_experts=2,
        canvas_length=12,
    )
    settings.update(overrides)
    return tiny_config(**settings)


def tiny_model(config: DiffusionGemmaConfig | None = None, *, seed: int = 0) -> DiffusionGemmaForBlockDiffusion:
    """A randomly initialised DiffusionGemma (eval mode) from ``config`` (default ``tiny_config()``)."""
    config = config if config is not None else tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiffusionGemmaForBlockDiffusion(config)
    return model.eval()


def _load_packaged_json(name: str) -> dict[str, Any]:
    text = resources.files("diffinterp").joinpath("assets", "reference", name).read_text()
    data = json.loads(text)
    data.pop("_source", None)
    return data


def real_config() -> DiffusionGemmaConfig:
    """The released DiffusionGemma 26B-A4B config (public facts; no weights).

    The vision tower is left at its transformers default, as in the released checkpoint.
    """
    data = _load_packaged_json("diffusiongemma-26B-A4B.json")
    data.pop("generation_defaults", None)
    data.pop("architectures", None)
    data.pop("model_type", None)
    text = data.pop("text_config")
    return DiffusionGemmaConfig(text_config=text, **data)


def real_generation_config() -> DiffusionGemmaGenerationConfig:
    """The released checkpoint's sampler defaults (48 steps, entropy bound 0.1, t 0.8 → 0.4)."""
    defaults = dict(_load_packaged_json("diffusiongemma-26B-A4B.json")["generation_defaults"])
    bound = defaults.pop("entropy_bound")
    return DiffusionGemmaGenerationConfig(sampler_config=EntropyBoundSamplerConfig(entropy_bound=bound), **defaults)


def real_ar_text_config() -> dict[str, Any]:
    """The text config of autoregressive Gemma 4 26B-A4B, as a dict for ``Gemma4TextConfig``."""
    return _load_packaged_json("gemma4-26B-A4B-text.json")


def meta_model(config: DiffusionGemmaConfig | None = None) -> DiffusionGemmaForBlockDiffusion:
    """Build a model on the ``meta`` device: real structure and shapes, no memory."""
    config = copy.deepcopy(config if config is not None else real_config())
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    return model.eval()
