"""Checking a DiffusionGemma checkpoint folder, and its memory plan, before anything loads.

:func:`check_checkpoint` reads only the folder's JSON files and the safetensors headers (the
weights' names, dtypes and shapes; no tensor data), builds the model on the meta device and
compares: every parameter present with its shape, nothing unexpected, the tokenizer readable and
inside the vocabulary, the sampler settings usable. A folder may hold ``model.safetensors``,
shards with ``model.safetensors.index.json``, or the index alone (a real checkpoint's layout
checked before downloading its shards: names are checked, shapes only where shard headers exist).
Every problem found is collected and raised at once as :class:`CheckpointError`.

:func:`memory_plan` turns the config into the bytes a run needs: weights, the prompt's KV cache,
a hook cache per step / canvas / prompt, recorded logits (``diffinterp check`` prints both).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from diffinterp.core.configs import meta_model
from diffinterp.core.hook_shapes import _attention_dims, hook_shape, visible_kv

INDEX_FILE = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}
SAFETENSORS_DTYPES |= {"BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(ValueError):
    """A checkpoint folder that would not load, or would load wrongly; ``problems`` lists each one."""

    def __init__(self, folder: Path, problems: list[str]):
        self.folder, self.problems = folder, problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{folder} is not a usable DiffusionGemma checkpoint ({len(problems)} problems):\n{listed}")


@dataclass
class CheckpointReport:
    """What a folder holds (no weights loaded). Byte counts are as stored on disk."""

    folder: Path
    config: object  # DiffusionGemmaConfig
    weight_files: list[str]
    weights_present: bool  # False: an index without its shard files (names checked, shapes not)
    tensors: int
    parameters: int
    weight_bytes: int
    weight_dtypes: dict[str, int]  # safetensors dtype -> tensors stored in it
    tokenizer: str | None
    generation: dict
    notes: list[str] = field(default_factory=list)


def check_checkpoint(folder: str | Path) -> CheckpointReport:
    """Check ``folder`` (see the module docstring); a :class:`CheckpointReport`, or :class:`CheckpointError`."""
    from transformers import DiffusionGemmaConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {folder}: expected an HF DiffusionGemma folder")
    problems: list[str] = []
    config_file = folder / "config.json"
    raw = _read_json(config_file, problems)
    if raw is None:
        raise CheckpointError(folder, problems)
    if raw.get("model_type") != "diffusion_gemma":
        problems.append(
            f"config.json: model_type is {raw.get('model_type')!r} ({raw.get('architectures')}); "
            "a DiffusionGemma checkpoint has 'diffusion_gemma'"
        )
        raise CheckpointError(folder, problems)
    try:
        config = DiffusionGemmaConfig.from_pretrained(str(folder))
    except Exception as err:  # transformers raises several types for a config it cannot build
        raise CheckpointError(folder, [f"config.json does not build a DiffusionGemmaConfig: {err}"]) from err
    expected, buffers = _expected_tensors(config)
    stored, files, present = _stored_tensors(folder, problems)
    aliases = {name: key for key, names in expected.items() for name in names}
    found_keys = set()
    for name, (_, shape) in stored.items():
        key = aliases.get(name)
        if key is None and name not in buffers:
            problems.append(f"weights: unexpected tensor '{name}' (not a parameter or buffer of this config)")
            continue
        if key is not None:
            found_keys.add(key)
        want = expected[key][name] if key is not None else buffers[name]
        if shape is not None and tuple(shape) != want:
            problems.append(f"weights: '{name}' has shape {list(shape)}, the config implies {list(want)}")
    # a tied lm_head shares its tensor (and so its aliases) with the embeddings; an untied one must be stored
    missing = [sorted(names)[0] for key, names in expected.items() if key not in found_keys]
    if stored and missing:
        problems.append(f"weights: {len(missing)} parameters missing, e.g. {missing[:3]}")
    tokenizer = _check_tokenizer(folder, config, problems)
    generation = _check_generation(folder, problems)
    if problems:
        raise CheckpointError(folder, problems)
    dtypes: dict[str, int] = {}
    for dtype, _ in stored.values():
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    numel = {name: math.prod(shape) if shape is not None else None for name, (_, shape) in stored.items()}
    weight_bytes = sum(numel[n] * SAFETENSORS_DTYPES.get(d, 2) for n, (d, _) in stored.items() if numel[n] is not None)
    if not present:
        weight_bytes = _index_total_size(folder) or weight_bytes
    notes = [] if present else [f"{INDEX_FILE} only: names checked, shapes and sizes from the index and the config"]
    parameters = sum(math.prod(next(iter(names.values()))) for names in expected.values())
    return CheckpointReport(
        folder, config, files, present, len(stored), parameters, weight_bytes, dtypes, tokenizer, generation, notes
    )


def _read_json(file: Path, problems: list[str]):
    if not file.is_file():
        problems.append(f"{file.name} is missing")
        return None
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"{file.name} is not valid JSON ({err})")
        return None


def _expected_tensors(config) -> tuple[dict[int, dict[str, tuple[int, ...]]], dict[str, tuple[int, ...]]]:
    """What the meta model saves: its parameters, by tensor, with every name each is saved under
    (shared and tied parameters have several) and its shape; its persistent buffers by name (a
    checkpoint may hold them; if not, they keep their initial values)."""
    model = meta_model(config)
    by_tensor: dict[int, dict[str, tuple[int, ...]]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(parameter), {})[name] = tuple(parameter.shape)
    buffers = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                buffers[f"{prefix}.{name}" if prefix else name] = tuple(buffer.shape)
    return by_tensor, buffers


def _stored_tensors(folder: Path, problems: list[str]) -> tuple[dict[str, tuple[str, list | None]], list[str], bool]:
    """Name -> (safetensors dtype, shape or None) from the headers (or the index alone); the files;
    whether the weight files are present."""
    index_file = folder / INDEX_FILE
    if index_file.is_file():
        index = _read_json(index_file, problems)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            problems.append(f"{INDEX_FILE} has no weight_map (name -> shard file)")
            return {}, [], False
        shards = sorted(set(weight_map.values()))
        present = [s for s in shards if (folder / s).is_file()]
        if present and len(present) < len(shards):
            problems.append(f"weights: {len(shards) - len(present)} of {len(shards)} shards missing, e.g. "
                            f"{sorted(set(shards) - set(present))[:3]}")  # fmt: skip
        if not present:
            return {name: ("?", None) for name in weight_map}, shards, False
        stored = _headers(folder, present, problems)
        for name, shard in weight_map.items():
            if shard in present and name not in stored:
                problems.append(f"{INDEX_FILE} puts '{name}' in {shard}, which does not hold it")
        return stored, shards, True
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found pickle files {pickles}, which are never loaded)" if pickles else ""
        problems.append(f"weights: no model.safetensors and no {INDEX_FILE}{hint}")
        return {}, [], False
    return _headers(folder, files, problems), files, True


def _headers(folder: Path, files: list[str], problems: list[str]) -> dict[str, tuple[str, list]]:
    stored = {}
    for file in files:
        try:
            with safe_open(str(folder / file), framework="pt", device="cpu") as reader:
                for name in reader.keys():
                    view = reader.get_slice(name)
                    stored[name] = (view.get_dtype(), list(view.get_shape()))
        except (SafetensorError, OSError) as err:
            problems.append(f"weights: {file} is not a readable safetensors file (truncated?): {err}")
    return stored


def _index_total_size(folder: Path) -> int | None:
    index = json.loads((folder / INDEX_FILE).read_text())
    size = (index.get("metadata") or {}).get("total_size")
    return int(size) if isinstance(size, (int, float, str)) and str(size).isdigit() else None


def _check_tokenizer(folder: Path, config, problems: list[str]) -> str | None:
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        problems.append("tokenizer: no tokenizer.json or tokenizer_config.json (prompts could not be encoded)")
        return None
    from diffinterp.core.loading import load_tokenizer

    try:
        tokenizer = load_tokenizer(folder)
    except ValueError as err:
        problems.append(f"tokenizer: {err}")
        return None
    size, vocab = len(tokenizer), config.text_config.vocab_size
    if size > vocab:
        problems.append(f"tokenizer: {size} tokens, more than the model's vocabulary of {vocab}")
    return f"{type(tokenizer).__name__}, {size} tokens (model vocabulary {vocab})"


def _check_generation(folder: Path, problems: list[str]) -> dict:
    from diffinterp.core.loading import check_generation_config

    try:
        check_generation_config(folder)
    except ValueError as err:
        problems.append(f"generation config: {err}")
        return {}
    return json.loads((folder / "generation_config.json").read_text())


# ---------------------------------------------------------------------------------------------
# The memory plan


@dataclass(frozen=True)
class MemoryRow:
    """One line of the plan: what, its bytes, and how it was counted."""

    what: str
    bytes: int
    how: str


def parameter_groups(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(parameters, output rows) of each group a quantizer treats differently, tied weights counted
    once: ``linear`` (``nn.Linear`` layers but the output embedding: what optimum-quanto and
    bitsandbytes quantize), ``experts`` (the MoE experts' stacked weights) and ``other``."""
    groups = {"linear": [0, 0], "experts": [0, 0], "other": [0, 0]}
    seen: set[int] = set()
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if isinstance(module, torch.nn.Linear) and module is not output and parameter.dim() == 2:
                group = "linear"
            elif name.rsplit(".", 1)[-1] == "experts":
                group = "experts"
            else:
                group = "other"
            groups[group][0] += parameter.numel()
            groups[group][1] += parameter.shape[0] if parameter.dim() == 2 else 0
    return {k: (v[0], v[1]) for k, v in groups.items()}


def quantized_weight_rows(model: torch.nn.Module, element: int) -> list[MemoryRow]:
    """The weights' bytes under each quantized load (``load_model(quantize=...)``), the parts a
    quantizer leaves alone at ``element`` bytes per value. Scales: quanto int8 one per output row;
    quanto int4 a scale and a shift per group of 128; FP8 one float32 per 128 x 128 block."""
    groups = parameter_groups(model)
    (linear, rows), (experts, _), (other, _) = groups["linear"], groups["experts"], groups["other"]
    dense = (experts + other) * element
    share = (
        f"{linear / 1e9:.2f} billion of {(linear + experts + other) / 1e9:.2f} billion parameters are in linear layers"
    )
    return [
        MemoryRow("weights, quantize='int8'", linear + rows * element + dense, f"optimum-quanto, linear layers only: {share}"),
        MemoryRow("weights, quantize='int4'", linear // 2 + 2 * (linear // 128) * element + dense, "optimum-quanto, linear layers only"),
        MemoryRow("weights, FineGrainedFP8Config (linear layers and experts)", (linear + experts) + 4 * ((linear + experts) // 16384) + other * element,
                  "quantize=FineGrainedFP8Config(...), GPU only; not quantize='float8'"),
    ]  # fmt: skip


def memory_plan(
    config, *, weight_bytes: int, prompt_len: int, steps: int, blocks: int, dtype: torch.dtype = torch.bfloat16
) -> list[MemoryRow]:
    """Bytes a run on one prompt needs, from the config: weights (as given), the KV cache at the
    last canvas, a cache of every ``hook_resid_post`` and of every decoder hook point per step,
    per canvas (``steps``) and per prompt (``blocks`` canvases), recorded logits."""
    from diffinterp.core.hooked import HookedDiffusionGemma
    from diffinterp.core.hooked import _element_size as _hook_element_size

    text = config.text_config
    element = torch.empty((), dtype=dtype).element_size()
    hm = HookedDiffusionGemma(meta_model(config))
    rows = [MemoryRow("weights", weight_bytes, "as stored"), *quantized_weight_rows(hm.model, element)]
    cached = prompt_len + (blocks - 1) * config.canvas_length  # the encoder's tokens before the last canvas
    kv = 0
    for layer in range(text.num_hidden_layers):
        _, n_kv, d_head = _attention_dims(config, layer)
        tokens = visible_kv(config, layer, cached, 0)
        kv += tokens * n_kv * d_head * 2 * element  # keys and values (separate tensors even when k = v)
    rows.append(
        MemoryRow("KV cache (one prompt)", kv, f"{cached} tokens before the last canvas; sliding layers keep a window")
    )
    decoder = [n for n in hm.hook_names if n.startswith("decoder.")]
    resid = [n for n in decoder if n.endswith("hook_resid_post")]
    for label, names in (("every decoder hook_resid_post", resid), ("every decoder hook point", decoder)):
        per_step = sum(
            math.prod(hook_shape(config, n, batch=1, prompt_len=prompt_len, block=blocks - 1))
            * _hook_element_size(n, None, dtype)  # as a cache stores it: ids int64, router and logits float32
            for n in names
        )
        rows.append(MemoryRow(f"cache of {label}: one step", per_step, f"{len(names)} hooks, last canvas"))
        rows.append(MemoryRow(f"cache of {label}: one canvas", per_step * steps, f"x {steps} steps"))
        rows.append(MemoryRow(f"cache of {label}: one prompt", per_step * steps * blocks, f"x {blocks} canvases"))
    logits = config.canvas_length * text.vocab_size * steps * blocks
    rows.append(MemoryRow("recorded logits (float32)", logits * 4, f"{steps} steps x {blocks} canvases"))
    rows.append(MemoryRow("recorded logits (bfloat16)", logits * 2, "logits_dtype=torch.bfloat16"))
    return rows
