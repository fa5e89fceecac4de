"""The trajectory viewer: one self-contained HTML page of a run, opened from ``file://`` offline.

    from diffinterp.figures.viewer import show, write_view
    write_view("view.html", traj, cache=cache, hm=hm, patching=[result])   # or: diffinterp view TRAJECTORY ...
    show(traj, cache, hm=hm)                                              # inline in Jupyter (built on demand)

The page scrubs the denoising steps of each prompt (batch row) and canvas (block): the canvas as
tokens x steps with accepted / re-noised / committed marks and per-position entropy; hovering a
token shows its top-k tokens and probabilities and what the self-conditioning bottleneck passes on;
clicking a position shows its logit lens over layers x steps; attention per head of the selected
step and layer; patching heatmaps linked to the steps, positions and layers they refer to; SAE
features as steps x positions heatmaps with each position's commit step marked.

Everything is computed here, in Python, and shipped as compact JSON (:func:`view_data`): token ids
as indices into one table of token strings, probabilities as integers in 1/``P_SCALE``, entropies
in 1/``E_SCALE`` nats, attention as base64 ``uint8``; never full logits. ``viewer_assets/`` holds
the page's hand-written JavaScript and CSS, inlined into the file (no CDN, no server).

Shapes (``S`` steps of a block, ``B`` prompts, ``C`` canvas positions, ``k`` top-k, ``L`` layers):
the per-step arrays of a block are flattened in ``[S, B, C]`` order, top-k in ``[S, B, C, k]``,
the lens in ``[S, L, B, P]`` (``P`` = the cached positions), SAE features in ``[F, S, B, P]`` and
their commit steps in ``[F, B, P]``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from diffinterp.core.bottleneck import Bottleneck, bottleneck_logits
from diffinterp.instruments.lens import RESID_POST, settle_steps, unembed
from diffinterp.instruments.patching import AttributionResult, PatchingResult
from diffinterp.instruments.saes.features import commit_steps, encode_activation, feature_trace
from diffinterp.records.cache import DenoisingCache
from diffinterp.records.decoding import token_labels
from diffinterp.records.files import write_text_atomic
from diffinterp.records.trajectory import Trajectory

FORMAT = "diffinterp.view/1"
TOP_K = 10
P_SCALE = 10_000  # probabilities as integers in 1/10000
E_SCALE = 1_000  # entropies as integers in millinats
F_SCALE = 1_000  # SAE feature activations as integers in 1/1000 of the feature's largest in the panel
LOGITS_HOOK = "decoder.hook_logits"
PATTERN = "decoder.blocks.{layer}.attn.hook_pattern"
MAX_ATTENTION_BYTES = 16 * 2**20  # quantised attention shipped in one page (uint8, before base64)
MAX_FEATURE_VALUES = 4 * 2**20  # SAE feature activations shipped per SAE and block (JSON integers)
FIELDS = ("argmax", "sampled", "canvas_in", "canvas_out")


# ---------------------------------------------------------------------------------------- records
@dataclass
class TopK:
    """The top-k of each step's softmax for one block: ``ids`` / ``probs`` ``[steps, batch, canvas, k]``.

    ``sc_probs`` (optional, same shape): the probability the self-conditioning bottleneck passes on
    to the next step for each of ``ids``.
    """

    ids: torch.Tensor
    probs: torch.Tensor
    sc_probs: torch.Tensor | None = None


@dataclass
class LensTop1:
    """The logit lens of one block reduced to its top-1: ``tokens`` / ``probs`` ``[steps, layers, batch, pos]``.

    ``positions``: the canvas positions of the last axis (None = all of them, in order).
    """

    tokens: torch.Tensor
    probs: torch.Tensor
    steps: list[int]
    layers: list[int]
    positions: list[int] | None = None


@dataclass
class FeatureSelection:
    """SAE features for the page: ``sae`` (a SAELens SAE) reading ``hook`` (cached for the run), and
    the ``features`` to show; None shows the ``top`` features whose activation changes most over the
    run's denoising steps (:func:`changing_features`). ``name`` labels them (default: the hook)."""

    sae: Any
    hook: str
    features: Sequence[int] | None = None
    top: int = 8
    name: str | None = None


class TopKRecorder:
    """A forward hook on ``decoder.hook_logits`` that keeps each step's top-k, never the full logits.

        recorder = TopKRecorder(k=10)
        traj = hm.run_with_hooks(ids, fwd_hooks=[("decoder.hook_logits", recorder)])
        write_view("view.html", traj, topk=recorder.topk())

    For runs whose full logits would not fit (the 26B model: 256 x 262k floats per step and prompt).
    """

    def __init__(self, k: int = TOP_K):
        self.k = k
        self._steps: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, logits: torch.Tensor, hook) -> None:
        ids, probs = logits_topk(logits.detach(), self.k)
        self._steps[(hook.block, hook.step)] = (ids.cpu(), probs.cpu())

    def topk(self) -> dict[int, TopK]:
        """Per block, the recorded steps stacked (steps 0.. in order)."""
        result = {}
        for block in sorted({b for b, _ in self._steps}):
            steps = sorted(s for b, s in self._steps if b == block)
            ids, probs = zip(*(self._steps[(block, s)] for s in steps), strict=True)
            result[block] = TopK(torch.stack(ids), torch.stack(probs))
        return result


# ---------------------------------------------------------------------------- pure computations
def logits_topk(logits: torch.Tensor, k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most probable tokens of ``softmax(logits)`` ``[..., vocab]``: ``(ids, probs)`` ``[..., k]``."""
    probs, ids = logits.float().softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
    return ids, probs


def self_conditioning_probs(
    logits: torch.Tensor, temperature: float, ids: torch.Tensor, bottleneck: str
) -> torch.Tensor | None:
    """The probability of each of ``ids`` ``[..., k]`` in what the next step's self-conditioning receives.

    That signal is the step's tempered logits ``logits / temperature`` passed through the bottleneck
    (:func:`diffinterp.core.bottleneck.bottleneck_logits`): its softmax (``continuous``), or the
    ``topk:K`` / ``topp:P`` distribution (kept tokens with their probabilities, the rest spread
    uniformly, or renormalised with ``:renorm``). ``argmax`` / ``sample`` pass one token (the page
    reads it from the trajectory) and ``none`` nothing: None for those.
    """
    mode = Bottleneck.parse(bottleneck)
    if mode.mode not in ("continuous", "topk", "topp"):
        return None
    tempered = logits.float() / temperature
    signal = bottleneck_logits(mode, tempered, tempered.argmax(-1))  # the draw only matters for ``sample``
    return signal.float().softmax(-1).gather(-1, ids)


def block_topk(trajectory: Trajectory, block: int, cache: DenoisingCache | None, k: int = TOP_K) -> TopK | None:
    """Top-k of every step of ``block`` from the recorded logits (the trajectory's, or ``decoder.hook_logits``
    in ``cache``); None when neither recorded them."""
    ids, probs, sc = [], [], []
    for step in trajectory.block(block).steps:
        logits = step.logits
        if logits is None and cache is not None and (LOGITS_HOOK, step.step, block) in cache:
            logits = cache.get(LOGITS_HOOK, step.step, block)
        if logits is None:
            return None
        step_ids, step_probs = logits_topk(logits, k)
        ids.append(step_ids.cpu())
        probs.append(step_probs.cpu())
        step_sc = self_conditioning_probs(logits, step.temperature, step_ids, trajectory.bottleneck)
        sc.append(None if step_sc is None else step_sc.cpu())
    has_sc = all(value is not None for value in sc)
    return TopK(torch.stack(ids), torch.stack(probs), torch.stack(sc) if has_sc else None)


def lens_top1(hm, cache: DenoisingCache, block: int = 0, rows_per_chunk: int = 8) -> LensTop1 | None:
    """The full-vocabulary logit lens (:func:`~diffinterp.instruments.lens.unembed`) of every cached
    ``decoder.blocks.{l}.hook_resid_post`` of ``block``, reduced to its argmax and that token's probability;
    ``rows_per_chunk`` prompts at a time (peak: one chunk's ``[rows, pos, vocab]`` logits). None if none is cached."""
    names = set(cache.names)
    layers = [
        layer
        for layer in range(hm.text_config.num_hidden_layers)
        if RESID_POST.format(layer=layer) in names and block in cache.blocks(RESID_POST.format(layer=layer))
    ]
    if not layers:
        return None
    steps = cache.steps(RESID_POST.format(layer=layers[0]), block)
    first = cache.get(RESID_POST.format(layer=layers[0]), steps[0], block)
    tokens = torch.empty(len(steps), len(layers), *first.shape[:2], dtype=torch.long)
    probs = torch.empty(len(steps), len(layers), *first.shape[:2])
    with torch.no_grad():
        for i, step in enumerate(steps):
            for j, layer in enumerate(layers):
                resid = cache.get(RESID_POST.format(layer=layer), step, block)
                for start in range(0, resid.shape[0], rows_per_chunk):
                    part = slice(start, start + rows_per_chunk)
                    best = unembed(hm, resid[part]).log_softmax(-1).max(-1)
                    tokens[i, j, part] = best.indices.cpu()
                    probs[i, j, part] = best.values.exp().cpu()
    positions = list(cache.positions) if cache.positions is not None else None
    return LensTop1(tokens, probs, steps, layers, positions)


def changing_features(trace: Iterable[torch.Tensor], top: int) -> list[int]:
    """The ``top`` features whose activation moves most over the steps of ``trace`` (``[batch, pos,
    d_sae]`` per step, e.g. a ``[steps, batch, pos, d_sae]`` tensor or a generator): the summed
    absolute step-to-step change (with one step, the summed activation), most first; ties by index.
    Streams: one step's features are held at a time."""
    previous = movement = activation = None
    for current in trace:
        current = current.float()  # ranked in float32, on the trace's device
        if previous is None:
            activation = current.abs().sum((0, 1))
            movement = torch.zeros_like(activation)
        else:
            movement += (current - previous).abs().sum((0, 1))
        previous, moved = current, previous is not None
    if previous is None:
        raise ValueError("a feature trace needs at least one step")
    movement = movement if moved else activation
    order = torch.argsort(movement, descending=True, stable=True)  # stable: ties by index
    return order[: max(0, top)].tolist()


def _feature_index(feature, d_sae: int) -> int:
    if isinstance(feature, bool):
        raise TypeError(f"a feature index is an integer, got {feature!r}")
    try:
        index = operator.index(feature)  # Python, NumPy and torch integers
    except TypeError:
        raise TypeError(f"a feature index is an integer, got {feature!r}") from None
    if not 0 <= index < d_sae:
        raise ValueError(f"feature {index} is not a feature of this SAE (it has {d_sae}: 0 .. {d_sae - 1})")
    return index


def feature_panels(
    selection: FeatureSelection, cache: DenoisingCache, block: int, max_values: int = MAX_FEATURE_VALUES
) -> list[dict[str, Any]]:
    """One panel per shown feature of ``selection`` on ``block``: its activation at every cached step
    and position (integers in 1/``F_SCALE`` of ``max``, ``[steps, batch, pos]`` flattened) and each
    position's commit step (:func:`~diffinterp.instruments.saes.features.commit_steps`, ``[batch, pos]``)."""
    sae, hook = selection.sae, selection.hook
    d_sae = sae.W_enc.shape[1]
    if selection.features is not None:
        features = [_feature_index(f, d_sae) for f in selection.features]
    else:
        # a first pass ranks the features one step at a time (a second encodes the chosen ones):
        # twice the encoding, never every feature of every step in memory at once
        per_step = (encode_activation(sae, cache.get(hook, step, block), hook) for step in cache.steps(hook, block))
        features = changing_features(per_step, selection.top)
    trace = feature_trace(sae, cache, hook, block=block, features=features).float().cpu()  # [S, B, P, shown]
    if trace.numel() > max_values:
        raise ValueError(
            f"{len(features)} features of '{hook}' over block {block}'s {trace.shape[0]} steps x {trace.shape[1]} "
            f"prompts x {trace.shape[2]} positions are {trace.numel():,} values, over the viewer's limit of "
            f"{max_values:,}: show fewer features (--features / --top-features) or fewer prompts or steps"
        )
    trace = torch.nan_to_num(trace, nan=0.0, posinf=0.0, neginf=0.0)  # a NaN would make the page's JSON unreadable
    positions = list(cache.positions) if cache.positions is not None else list(range(trace.shape[2]))
    panels = []
    for i, f in enumerate(features):
        values = trace[..., i].float()  # [S, B, P]
        top = float(values.abs().max())
        panels.append({
            "name": selection.name or selection.hook,
            "hook": selection.hook,
            "feature": f,
            "steps": values.shape[0],
            "positions": positions,
            "max": top,
            "values": quantise(values / (top or 1.0), F_SCALE),
            "commit": _flags(commit_steps(values)),
        })  # fmt: skip
    return panels


# ------------------------------------------------------------------------------------- encoding
class TokenTable:
    """Vocabulary ids -> indices into one table of token strings, holding only the ids the page shows."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._index: dict[int, int] = {}

    def encode(self, tokens: torch.Tensor) -> list[int]:
        """``tokens`` (any shape) flattened to table indices."""
        index, ids = self._index, self.ids
        out = []
        for token in tokens.reshape(-1).tolist():
            position = index.get(token)
            if position is None:
                position = index[token] = len(ids)
                ids.append(token)
            out.append(position)
        return out

    def strings(self) -> list[str]:
        return token_labels(self.ids, self.tokenizer)


def quantise(values: torch.Tensor, scale: int) -> list[int]:
    """``values`` (any shape) flattened to integers in 1/``scale``."""
    return (values.float() * scale).round().to(torch.int64).reshape(-1).tolist()


def _flags(values: torch.Tensor) -> list[int]:
    return values.reshape(-1).to(torch.int64).tolist()


def encode_topk(topk: TopK, table: TokenTable, shape: tuple[int, int, int]) -> dict[str, Any]:
    """Top-k ids (table indices) and quantised probabilities; ``shape`` = the block's ``(steps, batch, canvas)``."""
    if tuple(topk.ids.shape[:3]) != shape:
        raise ValueError(
            f"top-k of shape {list(topk.ids.shape)} does not match the block's [steps, batch, canvas] {list(shape)}"
        )
    encoded = {"k": topk.ids.shape[-1], "ids": table.encode(topk.ids), "p": quantise(topk.probs, P_SCALE)}
    if topk.sc_probs is not None:
        encoded["sc"] = quantise(topk.sc_probs, P_SCALE)
    return encoded


def encode_lens(lens: LensTop1, table: TokenTable) -> dict[str, Any]:
    return {
        "steps": list(lens.steps),
        "layers": list(lens.layers),
        "positions": lens.positions,
        "top": table.encode(lens.tokens),
        "p": quantise(lens.probs, P_SCALE),
    }


def encode_attention(cache: DenoisingCache, block: int, max_bytes: int = MAX_ATTENTION_BYTES) -> dict[str, Any] | None:
    """Every cached ``attn.hook_pattern`` ``[batch, heads, query, key]`` of ``block`` as base64 ``uint8``
    (``round(255 p)``), keyed ``"layer:step"``; None if none is cached. Raises past ``max_bytes``."""
    layers = sorted(
        int(name.split(".")[2])
        for name in cache.names
        if name.startswith("decoder.blocks.") and name.endswith(".attn.hook_pattern")
    )
    layers = [layer for layer in layers if block in cache.blocks(PATTERN.format(layer=layer))]
    if not layers:
        return None
    total = sum(
        cache.get(PATTERN.format(layer=layer), step, block).numel()
        for layer in layers
        for step in cache.steps(PATTERN.format(layer=layer), block)
    )
    if total > max_bytes:
        raise ValueError(
            f"the cached attention patterns of block {block} take {total / 2**20:.1f} MiB as uint8, over the "
            f"viewer's limit of {max_bytes / 2**20:.1f} MiB: cache hook_pattern at fewer layers or steps "
            "(run_with_cache(steps=..., names_filter=...)) or raise the limit (--max-attention-mb)"
        )
    data, steps, keys = {}, {}, {}
    heads = None
    for layer in layers:
        name = PATTERN.format(layer=layer)
        steps[layer] = cache.steps(name, block)
        for step in steps[layer]:
            pattern = cache.get(name, step, block).float().cpu()
            heads, keys[layer] = pattern.shape[1], pattern.shape[3]
            quantised = (pattern.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
            data[f"{layer}:{step}"] = base64.b64encode(quantised.numpy().tobytes()).decode("ascii")
    positions = list(cache.positions) if cache.positions is not None else None
    return {"layers": layers, "steps": steps, "heads": heads, "keys": keys, "positions": positions, "data": data}


def patching_panel(source: Any, title: str | None = None) -> dict[str, Any]:
    """One heatmap for the page: a ``patching.json`` dict (``diffinterp patch``), a :class:`PatchingResult`
    (its mean restored fraction) or an :class:`AttributionResult` (estimates summed over positions,
    mean over prompts). Axes named ``step``, ``position`` or ``layer`` link to the rest of the page."""
    if isinstance(source, PatchingResult):
        values = source.mean(normalised=True)
        axes = {name: list(labels) for name, labels in source.axes.items()}
        what = f"activation patching ({source.metric}, {source.mode}): restored fraction"
        info = {"hook": source.hook, "block": source.block}
    elif isinstance(source, AttributionResult):
        values = source.per_step_layer().mean(-1)
        axes = {"step": list(source.steps), "layer": list(source.layers)}
        what = f"attribution patching ({source.metric}): estimated effect, summed over positions"
        info = {"hook": source.hook, "block": source.block}
    elif isinstance(source, Mapping):
        if "axes" not in source or not any(key in source for key in ("restored_fraction", "values")):
            raise ValueError(
                "a patching file needs 'axes' and 'restored_fraction' (or 'values'), as `diffinterp patch` "
                f"writes in patching.json; got keys {sorted(source)}"
            )
        values = torch.tensor(_none_to_nan(source.get("restored_fraction", source.get("values"))), dtype=torch.float64)
        axes = {name: list(labels) for name, labels in source["axes"].items()}
        sweep = source.get("sweep", "")
        what = f"patching {sweep} ({source.get('metric', 'metric')}, {source.get('mode', '')})".replace(" ()", "")
        info = {key: source[key] for key in ("clean", "corrupt", "metric", "sweep", "mode") if key in source}
    else:
        raise TypeError(
            f"cannot show a {type(source).__name__} as a heatmap: give a PatchingResult, AttributionResult or patching.json dict"
        )
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() == 1:
        values = values.unsqueeze(0)
        axes = {"": [""], **axes}
    shape = [len(labels) for labels in axes.values()]
    if values.dim() != 2 or list(values.shape) != shape:
        raise ValueError(
            f"patching values of shape {list(values.shape)} do not match its axes {dict(zip(axes, shape, strict=False))}"
        )
    flat = [round(v, 4) if math.isfinite(v) else None for v in values.reshape(-1).tolist()]  # NaN (no gap): null
    return {
        "title": title or what,
        "axes": [[name, labels] for name, labels in axes.items()],
        "values": flat,
        "info": info,
    }


def _none_to_nan(values):
    """JSON's null (NaN written by ``write_json_atomic``) back to NaN, in nested lists."""
    if isinstance(values, list):
        return [_none_to_nan(value) for value in values]
    return float("nan") if values is None else values


def block_data(
    trajectory: Trajectory,
    block: int,
    table: TokenTable,
    *,
    topk: TopK | None,
    lens: LensTop1 | None,
    attention: dict[str, Any] | None,
    features: list[dict[str, Any]] = (),
) -> dict[str, Any]:
    """One canvas's arrays for the page (flattened ``[steps, batch, canvas]``; see the module docstring)."""
    record = trajectory.block(block)
    n_steps = record.n_steps
    shape = (n_steps, trajectory.batch_size, trajectory.canvas_length)
    data: dict[str, Any] = {
        "block": record.block,
        "steps": n_steps,
        "prefix_len": record.prefix_len,
        "prefix": table.encode(trajectory.sequences[:, : record.prefix_len]),
        "temperature": [round(t, 4) for t in trajectory.temperatures(block)],
        "final": table.encode(record.final_canvas),
        "committed": _flags(settle_steps(trajectory, block)),
    }
    for name in FIELDS:
        data[name] = table.encode(trajectory.stack(name, block))
    data["accepted"] = _flags(trajectory.stack("accepted", block))
    data["active"] = _flags(trajectory.stack("active", block))
    data["entropy"] = quantise(trajectory.stack("entropy", block), E_SCALE)
    data["topk"] = encode_topk(topk, table, shape) if topk is not None else None
    data["lens"] = encode_lens(lens, table) if lens is not None else None
    data["attention"] = attention
    data["features"] = list(features)
    return data


def view_data(
    trajectory: Trajectory,
    cache: DenoisingCache | None = None,
    *,
    hm=None,
    tokenizer=None,
    patching: Iterable[Any] = (),
    topk: Mapping[int, TopK] | None = None,
    lens: Mapping[int, LensTop1] | None = None,
    saes: Iterable[FeatureSelection] = (),
    k: int = TOP_K,
    max_attention_bytes: int = MAX_ATTENTION_BYTES,
    title: str | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as a JSON-ready dict.

    Token strings come from ``tokenizer`` (default ``hm.tokenizer``; ``#id`` labels without one). Top-k
    comes from ``topk`` (per block, e.g. :meth:`TopKRecorder.topk`) or the recorded logits; the logit lens
    from ``lens`` or, with ``hm``, from the cache's ``hook_resid_post``; attention from the cache's
    ``attn.hook_pattern``; heatmaps from ``patching`` (see :func:`patching_panel`); SAE feature
    panels from ``saes`` (:class:`FeatureSelection`, read from the cache: each hook must be cached).
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(hm, "tokenizer", None)
    saes = list(saes)
    for selection in saes:
        if cache is None or selection.hook not in set(cache.names):
            cached = "no cache given" if cache is None else f"the cache holds {', '.join(sorted(cache.names))}"
            raise ValueError(
                f"SAE features read '{selection.hook}' from the cache, and {cached}: cache that hook at every step "
                f"(run_with_cache(names_filter=['{selection.hook}']) or diffinterp run --cache '{selection.hook}')"
            )
    table = TokenTable(tokenizer)
    mask = trajectory.attention_mask.bool()
    prompts = [table.encode(trajectory.prompt_ids[row][mask[row]]) for row in range(trajectory.batch_size)]
    blocks = []
    for record in trajectory.blocks:
        index = record.block
        top = (topk or {}).get(index)
        if top is None:
            top = block_topk(trajectory, index, cache, k)
        block_lens = (lens or {}).get(index)
        if block_lens is None and hm is not None and cache is not None:
            block_lens = lens_top1(hm, cache, index)
        attention = encode_attention(cache, index, max_attention_bytes) if cache is not None else None
        features = [
            panel
            for selection in saes
            if index in cache.blocks(selection.hook)
            for panel in feature_panels(selection, cache, index)
        ]
        blocks.append(
            block_data(trajectory, index, table, topk=top, lens=block_lens, attention=attention, features=features)
        )
    return {
        "format": FORMAT,
        "title": title or "diffinterp trajectory",
        "rows": trajectory.batch_size,
        "canvas": trajectory.canvas_length,
        "bottleneck": trajectory.bottleneck,
        "p_scale": P_SCALE,
        "e_scale": E_SCALE,
        "f_scale": F_SCALE,
        "prompts": prompts,
        "blocks": blocks,
        "patching": [patching_panel(item) for item in patching],
        "ids": table.ids,
        "strings": table.strings(),
    }


# ------------------------------------------------------------------------------------------ page
def _asset(name: str) -> str:
    return resources.files("diffinterp.figures").joinpath("viewer_assets", name).read_text(encoding="utf-8")


def _script_json(data: dict[str, Any]) -> str:
    """JSON safe inside ``<script>``: ``<`` and ``/`` escaped (no ``</script>``, no literal URL in the file)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace("/", "\\/")


def render_page(data: dict[str, Any]) -> str:
    """The self-contained HTML page of :func:`view_data`'s ``data`` (CSS, JSON and JavaScript inline)."""
    values = {
        "{{TITLE}}": html.escape(data["title"]),
        "/*{{CSS}}*/": _asset("viewer.css"),
        "{{DATA}}": _script_json(data),
        "/*{{JS}}*/": _asset("viewer.js"),
    }
    # One pass, so nothing inserted is itself searched for markers.
    return re.sub("|".join(re.escape(marker) for marker in values), lambda m: values[m.group(0)], _asset("viewer.html"))


def view_html(trajectory: Trajectory, cache: DenoisingCache | None = None, **kwargs) -> str:
    """The viewer page of ``trajectory`` (arguments of :func:`view_data`)."""
    return render_page(view_data(trajectory, cache, **kwargs))


def write_view(path: str | Path, trajectory: Trajectory, cache: DenoisingCache | None = None, **kwargs) -> Path:
    """Write the viewer page to ``path`` atomically (arguments of :func:`view_data`)."""
    return write_text_atomic(path, view_html(trajectory, cache, **kwargs))


@dataclass
class TrajectoryView:
    """A viewer page built on demand: shown inline by Jupyter (``_repr_html_``), or :meth:`save`\\ d."""

    trajectory: Trajectory
    cache: DenoisingCache | None = None
    options: dict[str, Any] | None = None
    height: int = 760

    def html(self) -> str:
        return view_html(self.trajectory, self.cache, **(self.options or {}))

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.html())

    def _repr_html_(self) -> str:
        # An iframe keeps the page's script and styles apart from the notebook's.
        return (
            f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" '
            f'style="width:100%;height:{self.height}px;border:0"></iframe>'
        )


def show(trajectory: Trajectory, cache: DenoisingCache | None = None, **kwargs) -> TrajectoryView:
    """The viewer of ``trajectory`` for a notebook cell (arguments of :func:`view_data`); nothing is built
    until the notebook displays it."""
    return TrajectoryView(trajectory, cache, kwargs)
