"""Loading DiffusionGemma checkpoints: bundled ones by name, local HF folders (safetensors only).

``load_hf_model`` returns the *unmodified* transformers model; ``load_model`` wraps it in a
:class:`~diffinterp.core.hooked.HookedDiffusionGemma`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import DiffusionGemmaForBlockDiffusion

from diffinterp.core.hooked import HookedDiffusionGemma

DIFFUSION_MODEL_TYPE = "diffusion_gemma"

METADATA_FILE = "diffinterp.json"  # our own facts about a checkpoint (organism, demo prompt, tasks)
#: The bundled model ``load_model()`` loads: an organism whose denoising loop is load-bearing.
DEFAULT_MODEL = "carry"
KINDS = ("diffusion", "ar")  # a bundled organism's DiffusionGemma and its autoregressive twin


def assets_dir() -> Path:
    return Path(str(resources.files("diffinterp").joinpath("assets")))


def bundled_models(kind: str = "diffusion") -> dict[str, Path]:
    """The bundled checkpoints of ``kind`` by organism name (``assets/NAME/KIND``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    found = {}
    for folder in sorted(assets_dir().iterdir()):
        if (folder / kind / "config.json").is_file():
            found[folder.name] = folder / kind
    return found


def resolve_model_path(name_or_path: str | Path | None = None, kind: str = "diffusion") -> Path:
    """The folder of a bundled model by name (``"latin"``; ``None``: :data:`DEFAULT_MODEL`) or an
    existing folder; a clear error naming the bundled models otherwise."""
    name_or_path = DEFAULT_MODEL if name_or_path is None else name_or_path
    path = Path(name_or_path)
    bundled = bundled_models(kind)
    if isinstance(name_or_path, str) and name_or_path in bundled:
        return bundled[name_or_path]
    if path.exists() or isinstance(name_or_path, Path) or len(path.parts) > 1:
        return path
    raise FileNotFoundError(
        f"no bundled {kind} model named '{name_or_path}' (bundled: {', '.join(bundled) or 'none'}) "
        "and no folder at that path: give an organism name or an HF checkpoint folder"
    )


def bundled_model_path(name: str | None = None) -> Path:
    """Folder of a bundled DiffusionGemma (default :data:`DEFAULT_MODEL`)."""
    return resolve_model_path(name)


def checkpoint_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """diffinterp's metadata saved beside a checkpoint (``diffinterp.json``), or {}; ``path`` may be a
    bundled model's name."""
    folder = resolve_model_path(path)
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


def check_loading_info(info: dict, folder: Path, what: str = "checkpoint", quantized: bool = False) -> None:
    """Raise if ``from_pretrained(..., output_loading_info=True)`` found weights missing or mismatched.

    transformers fills absent weights with random values, so a checkpoint missing any is corrupted;
    ``lm_head`` is tied to the embeddings and may be absent. A quantized load adds the quantizer's
    activation scales (:data:`QUANTIZER_BUFFERS`), which a float checkpoint does not hold.
    """
    missing = sorted(
        key
        for key in info.get("missing_keys", [])
        if not key.startswith("lm_head.") and not (quantized and key.rsplit(".", 1)[-1] in QUANTIZER_BUFFERS)
    )
    if missing or info.get("mismatched_keys"):
        raise ValueError(
            f"the {what} in {folder} is incomplete or corrupted: missing weights {missing[:5]}, "
            f"mismatched {list(info.get('mismatched_keys', []))[:5]}"
        )


GENERATION_FILE = "generation_config.json"


def check_generation_config(folder: Path) -> None:
    """Raise unless ``folder`` has readable sampler settings: without them transformers silently
    samples with its defaults (256 tokens, 48 steps, no EOS: sixteen canvases of a small model)."""
    file = folder / GENERATION_FILE
    way_out = (
        "pass the sampler settings explicitly: load_model(path, generation_config=DiffusionGemmaGenerationConfig(...))"
    )
    if not file.is_file():
        raise ValueError(f"{folder} has no {GENERATION_FILE}: the sampler's settings are unknown; {way_out}")
    try:
        settings = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}); {way_out}") from err
    if not isinstance(settings, dict) or settings.get("eos_token_id") is None:
        raise ValueError(f"{file} sets no eos_token_id, so generation would never stop at an answer; {way_out}")


def check_finite(model, folder: Path | str) -> None:
    """Raise naming the parameters that hold NaN or infinite values (a corrupted checkpoint)."""
    bad = [name for name, p in model.named_parameters() if p.device.type != "meta" and not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"the checkpoint in {folder} has non-finite weights in {len(bad)} tensors, e.g. {bad[:5]}")


#: ``quantize=`` shorthands: weight-only quantization by optimum-quanto (runs on CPU and GPU).
QUANTO_WEIGHTS = ("int8", "int4", "float8")
# Buffers quanto adds to each quantized linear layer (scales for quantized activations, unused
# with weight-only quantization): absent from a float checkpoint, so not "missing weights".
QUANTIZER_BUFFERS = frozenset({"input_scale", "output_scale"})


def quantization_config(quantize) -> Any:
    """The transformers quantization config for ``quantize=``: ``"int8"`` / ``"int4"`` / ``"float8"``
    (weight-only, optimum-quanto), or a transformers config object (``BitsAndBytesConfig``,
    ``QuantoConfig``, ...) as given.

    The shorthands keep only the output embedding in full precision. transformers' default would
    also keep every *tied* module, and DiffusionGemma's decoder shares all its weights with the
    encoder, so the default quantizes nothing of the language model."""
    if not isinstance(quantize, str):
        return quantize
    if quantize not in QUANTO_WEIGHTS:
        raise ValueError(
            f"quantize={quantize!r} is not a weight type; give one of {', '.join(QUANTO_WEIGHTS)} "
            "(optimum-quanto) or a transformers quantization config (e.g. BitsAndBytesConfig(load_in_4bit=True))"
        )
    try:
        import optimum.quanto  # noqa: F401
    except ImportError as err:
        raise ImportError(f"quantize={quantize!r} needs optimum-quanto: pip install optimum-quanto") from err
    from transformers import QuantoConfig

    return QuantoConfig(weights=quantize, modules_to_not_convert=["lm_head"])


def quantized_linear_layers(model: torch.nn.Module) -> list[str]:
    """Names of the decoder's linear layers whose weights a quantizer replaced (their module class or
    weight type is no longer torch's own)."""
    found = []
    for name, module in model.model.decoder.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or "embed" in name or "norm" in name:
            continue
        if type(module) is not torch.nn.Linear or type(weight) not in (torch.nn.Parameter, torch.Tensor):
            found.append(name)
    return found


class _DropScalesOnlyReport(logging.Filter):
    """Drops transformers' load report when every row it lists is a quantizer buffer reported
    MISSING; a report with anything else (an unexpected or mismatched weight, a real missing one)
    is kept whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line.split("|") for line in message.splitlines() if line.count("|") >= 2]
        rows = [(cells[0].strip(), cells[1].strip()) for cells in rows if cells[0].strip() not in ("", "Key")]
        rows = [(key, status) for key, status in rows if not set(key) <= {"-", "+"}]  # the table's rule line
        only_scales = bool(rows) and all(
            "MISSING" in status and key.rsplit(".", 1)[-1] in QUANTIZER_BUFFERS for key, status in rows
        )
        return not only_scales


@contextmanager
def _quiet_load_report(quiet: bool) -> Iterator[None]:
    """While a quantized model loads, drop transformers' load report if all it lists is the
    quantizer's activation scales as "missing" (unused without activation quantization, and not in
    a float checkpoint); any other report is shown, and :func:`check_loading_info` still refuses a
    checkpoint that lacks real weights."""
    if not quiet:
        yield
        return
    modeling_logger, dropper = logging.getLogger("transformers.modeling_utils"), _DropScalesOnlyReport()
    modeling_logger.addFilter(dropper)
    try:
        yield
    finally:
        modeling_logger.removeFilter(dropper)


def load_hf_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
    generation_config=None,
    quantize=None,
) -> DiffusionGemmaForBlockDiffusion:
    """Load the bare transformers model from an HF folder or a bundled model's name (default:
    :data:`DEFAULT_MODEL`).

    The folder must hold its sampler settings (``generation_config.json``) unless
    ``generation_config`` (a ``DiffusionGemmaGenerationConfig``) is given; weights with NaN or
    infinite values are refused. ``device_map`` / ``max_memory`` / ``offload_folder`` go to
    accelerate through transformers: ``device_map="auto", max_memory={0: "70GiB", "cpu": "200GiB"}``
    splits the model over devices and offloads what does not fit to the CPU, then to disk.
    ``quantize``: ``"int8"`` / ``"int4"`` / ``"float8"`` weights (optimum-quanto, CPU or GPU) or a
    transformers quantization config (:func:`quantization_config`); a config that leaves the
    decoder layers' linear layers unquantized is refused.
    """
    folder = resolve_model_path(path)
    validate_checkpoint_folder(folder)
    if generation_config is None:
        check_generation_config(folder)
    if device is not None and device_map is not None:
        raise ValueError("give either device= or device_map=, not both (device_map='auto' shards over GPUs)")
    if (max_memory is not None or offload_folder is not None) and device_map is None:
        raise ValueError("max_memory= and offload_folder= place a model split by device_map=: add device_map='auto'")
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    if quantize is not None:
        kwargs["quantization_config"] = quantization_config(quantize)
    try:
        with _quiet_load_report(quantize is not None):
            model, info = DiffusionGemmaForBlockDiffusion.from_pretrained(
                str(folder), output_loading_info=True, **kwargs
            )
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        raise ValueError(f"could not load the checkpoint in {folder}: {err}") from err
    check_loading_info(info, folder, quantized=quantize is not None)
    if quantize is not None and not any(name.startswith("layers.") for name in quantized_linear_layers(model)):
        raise ValueError(
            f"the quantization config {type(kwargs['quantization_config']).__name__} left the linear layers of every "
            "decoder layer in full precision: transformers keeps tied modules unquantized by default, and DiffusionGemma's decoder "
            "ties all its weights to the encoder's. Set its modules_to_not_convert (bitsandbytes: "
            "llm_int8_skip_modules) to ['lm_head'], or pass quantize='int8'"
        )
    check_finite(model, folder)
    if generation_config is not None:
        model.generation_config = generation_config
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(path: str | Path | None = None):
    """The tokenizer saved beside a checkpoint, or ``None`` if the folder has none."""
    from transformers import AutoTokenizer

    folder = resolve_model_path(path)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # tokenizers raises its own exception types for unreadable files
        raise ValueError(f"the tokenizer in {folder} could not be read (tokenizer.json corrupted?): {err}") from err


def load_model(
    path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
    generation_config=None,
    quantize=None,
):
    """Load a bundled model by name (``"latin"``; default :data:`DEFAULT_MODEL`) or an HF DiffusionGemma
    folder as a ``HookedDiffusionGemma`` (``hm.metadata``: the checkpoint's ``diffinterp.json``).

    ``generation_config`` sets the sampler (required when the folder has none, see
    :func:`load_hf_model`). ``device_map="auto"`` is passed to transformers/accelerate, so the 26B
    model shards over GPUs (``max_memory`` / ``offload_folder``: CPU and disk offload, docs/real-model.md);
    activations of different layers then live on different devices, and caches gather them on
    the device the caller asks for. ``quantize="int8"`` (or ``"int4"``, ``"float8"``, or a
    transformers quantization config) loads quantized weights; the hook points are the same
    (docs/real-model.md).
    """

    model = load_hf_model(
        path,
        device=device,
        dtype=dtype,
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
        generation_config=generation_config,
        quantize=quantize,
    )
    return HookedDiffusionGemma(model, tokenizer=load_tokenizer(path), metadata=checkpoint_metadata(path))
