"""Loading DiffusionGemma checkpoints and building configs.

Everything here returns the *unmodified* transformers model (``DiffusionGemmaForBlockDiffusion``);
``load_model`` wraps it in a :class:`~diffinterp.hooks.HookedDiffusionGemma`.

- ``load_model(path)``: an HF folder (safetensors only) or, with no path, the bundled checkpoint.
- ``tiny_config(**overrides)``: small random configs for tests (text stack + a one-layer vision stub,
  since transformers always builds the vision tower).
- ``real_config()``: the released 26B-A4B structure, shipped as package data; build it on the
  ``meta`` device for real-size shapes with no memory.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
)
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaGenerationConfig,
    EntropyBoundSamplerConfig,
)

DIFFUSION_MODEL_TYPE = "diffusion_gemma"

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
    text = resources.files("diffinterp").joinpath("configs", name).read_text()
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


ASSETS = ("diffusion",)  # the trained toy model (docs/model.md)
METADATA_FILE = "diffinterp.json"  # our own facts about a checkpoint (demo prompt, tasks)


def bundled_model_path() -> Path:
    """Folder of the checkpoint shipped with the package (the trained toy model when present)."""
    assets = Path(str(resources.files("diffinterp").joinpath("assets")))
    for name in ASSETS:
        if (assets / name / "config.json").is_file():
            return assets / name
    raise FileNotFoundError(f"no bundled checkpoint under {assets}; the package data is incomplete")


def checkpoint_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """diffinterp's metadata saved beside a checkpoint (``diffinterp.json``), or {}."""
    folder = Path(path) if path is not None else bundled_model_path()
    file = folder / METADATA_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def save_tiny_random_checkpoint(folder: str | Path, config: DiffusionGemmaConfig | None = None, seed: int = 0) -> Path:
    """Save a random tiny DiffusionGemma with the toy tokenizer as an HF folder (a test fixture)."""
    from diffinterp.toy.tokenizer import VOCAB_SIZE, build_tokenizer

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


def validate_checkpoint_folder(
    path: Path,
    model_type: str = DIFFUSION_MODEL_TYPE,
    architecture: str = "DiffusionGemmaForBlockDiffusion",
    loader: str = "diffinterp.load_model",
) -> None:
    """Raise a clear error unless ``path`` is an HF folder of ``model_type`` with safetensors weights."""
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {path}: expected an HF folder with config.json")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: expected an HF {architecture} folder")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the checkpoint folder is corrupted") from err
    found = config.get("model_type")
    if found != model_type:
        raise ValueError(
            f"{path} holds a '{found}' model ({config.get('architectures')}); {loader} "
            f"needs a '{model_type}' checkpoint ({architecture})"
        )
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found pickle files {pickles}, which are never loaded)" if pickles else ""
        raise FileNotFoundError(f"{path} has no *.safetensors weights{hint}")


def check_loading_info(info: dict, folder: Path, what: str = "checkpoint") -> None:
    """Raise if ``from_pretrained(..., output_loading_info=True)`` found weights missing or mismatched.

    transformers fills absent weights with random values, so a checkpoint missing any is corrupted;
    ``lm_head`` is tied to the embeddings and may be absent.
    """
    missing = sorted(key for key in info.get("missing_keys", []) if not key.startswith("lm_head."))
    if missing or info.get("mismatched_keys"):
        raise ValueError(
            f"the {what} in {folder} is incomplete or corrupted: missing weights {missing[:5]}, "
            f"mismatched {list(info.get('mismatched_keys', []))[:5]}"
        )


def load_hf_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
) -> DiffusionGemmaForBlockDiffusion:
    """Load the bare transformers model from an HF folder (default: the bundled checkpoint)."""
    folder = Path(path) if path is not None else bundled_model_path()
    validate_checkpoint_folder(folder)
    if device is not None and device_map is not None:
        raise ValueError("give either device= or device_map=, not both (device_map='auto' shards over GPUs)")
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model, info = DiffusionGemmaForBlockDiffusion.from_pretrained(str(folder), output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        raise ValueError(f"could not load the checkpoint in {folder}: {err}") from err
    check_loading_info(info, folder)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(path: str | Path | None = None):
    """The tokenizer saved beside a checkpoint, or ``None`` if the folder has none."""
    from transformers import AutoTokenizer

    folder = Path(path) if path is not None else bundled_model_path()
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        return None
    return AutoTokenizer.from_pretrained(str(folder))


def load_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
):
    """Load an HF DiffusionGemma folder (default: the bundled checkpoint) as a ``HookedDiffusionGemma``.

    ``device_map="auto"`` is passed to transformers/accelerate, so the 26B model shards over GPUs;
    activations of different layers then live on different devices, and caches gather them on
    the device the caller asks for.
    """
    from diffinterp.hooks import HookedDiffusionGemma

    model = load_hf_model(path, device=device, dtype=dtype, device_map=device_map)
    return HookedDiffusionGemma(model, tokenizer=load_tokenizer(path))
