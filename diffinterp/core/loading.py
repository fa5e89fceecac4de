"""Loading DiffusionGemma checkpoints: bundled ones by name, local HF folders (safetensors only).

``load_hf_model`` returns the *unmodified* transformers model; ``load_model`` wraps it in a
:class:`~diffinterp.core.hooked.HookedDiffusionGemma`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import DiffusionGemmaForBlockDiffusion

from diffinterp.core.hooked import HookedDiffusionGemma

DIFFUSION_MODEL_TYPE = "diffusion_gemma"

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

    model = load_hf_model(path, device=device, dtype=dtype, device_map=device_map)
    return HookedDiffusionGemma(model, tokenizer=load_tokenizer(path))
