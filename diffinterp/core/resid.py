"""The residual stream of one decoder pass, taken apart: accumulated, decomposed, per head.

TransformerLens's ``ActivationCache`` conveniences for one denoising step of a DiffusionGemma
(``hm.accumulated_resid``, ``hm.decompose_resid``, ``hm.stack_head_results``,
``hm.apply_ln_to_stack`` call these with the model). The decoder layer is a sandwich:

    resid_mid  = resid_pre + attn_out                 attn_out = post_attention_layernorm(o_proj(z))
    resid_post = (resid_mid + ffn_out) * layer_scalar ffn_out  = post_feedforward_layernorm(mlp + moe)

so the residual entering layer ``L`` is exactly ``sc_out * prod(scalars) + sum_l (attn_out[l] +
ffn_out[l]) * prod(scalars from l on)``: :func:`decompose_resid` returns those terms, already
multiplied by the layer scalars after them, and they sum to the residual. A head's result is its
slice of ``o_proj`` (``z[h] @ W_O[h]``); :func:`stack_head_results` multiplies it by the
post-attention norm's scale of that pass (``weight / rms(o_proj output)``), so the heads sum to
``hook_attn_out``. ``apply_ln`` does the same with the final norm (``decoder.norm``): one scale per
position, from the whole residual, so a stack's components still sum to the normalised residual
and each one's ``lm_head`` projection is its direct contribution to the logits (before soft-capping).

Every function reads a :class:`~diffinterp.records.cache.DenoisingCache` that holds the hooks it
needs at ``step`` (the error says which); tensors are ``[components, batch, pos, d_model]``.
"""

from __future__ import annotations

import math

import torch

from diffinterp.records.cache import DenoisingCache

PRE, MID, POST = (
    "decoder.blocks.{}.hook_resid_pre",
    "decoder.blocks.{}.hook_resid_mid",
    "decoder.blocks.{}.hook_resid_post",
)
ATTN_OUT, FFN_OUT, Z = (
    "decoder.blocks.{}.hook_attn_out",
    "decoder.blocks.{}.hook_ffn_out",
    "decoder.blocks.{}.attn.hook_z",
)
SC_OUT = "decoder.sc.hook_out"


def _n_layers(model) -> int:
    return len(model.model.decoder.layers)


def _layer(model, layer: int | None, what: str) -> int:
    n = _n_layers(model)
    layer = n if layer is None or layer == -1 else layer
    if not 0 <= layer <= n:
        raise IndexError(f"{what}: layer {layer} out of range 0..{n} ({n} = the residual after the last layer)")
    return layer


def _get(cache: DenoisingCache, name: str, step: int, block: int, why: str) -> torch.Tensor:
    try:
        return cache.get(name, step, block)
    except KeyError as error:
        fix = (
            "cache it at that step (run_with_cache(steps=...))"
            if name in cache.names
            else f"cache it (run_with_cache(names_filter=[..., '{name}']))"
        )
        raise KeyError(f"{why} needs '{name}' at step {step} of block {block}: {fix}; {error.args[0]}") from None


def _positions(tensor: torch.Tensor, positions, cache: DenoisingCache) -> torch.Tensor:
    """The canvas ``positions`` (an int or a list) of a ``[..., pos, d]`` activation; on a cache
    recorded with ``positions=``, canvas positions are mapped to the stored ones."""
    if positions is None:
        return tensor
    wanted = [positions] if isinstance(positions, int) else list(positions)
    stored = list(cache.positions) if cache.positions is not None else list(range(tensor.shape[-2]))
    missing = [p for p in wanted if p not in stored]
    if missing:
        raise IndexError(f"canvas position {missing[0]} is not in this cache (it holds positions {stored})")
    return tensor[..., [stored.index(p) for p in wanted], :]


def _rms_scale(norm: torch.nn.Module, total: torch.Tensor) -> torch.Tensor:
    """What ``norm`` multiplies ``total`` by, per position: ``weight / sqrt(mean(total^2) + eps)``."""
    scale = (total.float().pow(2).mean(-1, keepdim=True) + norm.eps).pow(-0.5)
    weight = getattr(norm, "weight", None) if getattr(norm, "with_scale", True) else None
    return scale * weight.float().to(scale.device) if weight is not None else scale  # cache and model may differ


def _scalars_after(model, start: int, end: int) -> float:
    """The product of the layer scalars of layers ``start .. end - 1`` (what a term written before
    layer ``start`` is multiplied by on its way to the residual entering ``end``)."""
    return math.prod(float(model.model.decoder.layers[index].layer_scalar) for index in range(start, end))


def _needs_last_layer(model, layer: int, apply_ln: bool) -> None:
    if apply_ln and layer != _n_layers(model):
        raise ValueError("apply_ln scales by the final norm: it needs layer=None (the residual after the last layer)")


def _stacked(model, parts, labels, cache, step, block, positions, apply_ln: bool, return_labels: bool):
    """Stack ``parts`` at ``positions``, scaled by the final norm with ``apply_ln``; with labels if asked."""
    stack = torch.stack([_positions(part, positions, cache) for part in parts])
    if apply_ln:
        stack = apply_ln_to_stack(model, stack, cache, step, block, positions)
    return (stack, labels) if return_labels else stack


def residual_at(model, cache: DenoisingCache, step: int, block: int = 0, layer: int | None = None, positions=None):
    """The residual stream entering ``layer`` (``n_layers`` or None: after the last layer)."""
    layer = _layer(model, layer, "residual_at")
    name = POST.format(_n_layers(model) - 1) if layer == _n_layers(model) else PRE.format(layer)
    return _positions(_get(cache, name, step, block, "the residual"), positions, cache)


def apply_ln_to_stack(
    model, stack: torch.Tensor, cache: DenoisingCache, step: int, block: int = 0, positions=None
) -> torch.Tensor:
    """Scale every component of ``stack`` ``[components, batch, pos, d_model]`` as the final norm
    scales the whole residual it is part of (the residual after the last layer, read from ``cache``):
    the components then sum to ``decoder.norm(residual)``."""
    total = residual_at(model, cache, step, block, None, positions)
    if stack.shape[-3:] != total.shape:
        raise ValueError(
            f"stack {list(stack.shape)} must end with the residual's [batch, pos, d_model] = {list(total.shape)}"
            " at the positions= given here (pass the positions the stack was taken at)"
        )
    return stack.float() * _rms_scale(model.model.decoder.norm, total.to(stack.device))


def accumulated_resid(
    model,
    cache: DenoisingCache,
    step: int,
    block: int = 0,
    layer: int | None = None,
    *,
    incl_mid: bool = False,
    apply_ln: bool = False,
    positions=None,
    return_labels: bool = False,
):
    """The residual stream entering each layer up to ``layer``: ``[layer + 1, batch, pos, d_model]``
    (``incl_mid``: also each layer's ``resid_mid``), labels ``"0_pre"``, ``"0_mid"``, …,
    ``"final_post"``. ``apply_ln=True`` puts each entry through the final norm with its *own*
    statistics (what the logit lens reads), as TransformerLens does at the unembedding."""
    n = _n_layers(model)
    layer = _layer(model, layer, "accumulated_resid")
    parts, labels = [], []
    for index in range(layer + 1):
        if index == n:
            parts.append(_get(cache, POST.format(n - 1), step, block, "accumulated_resid"))
            labels.append("final_post")
            continue
        parts.append(_get(cache, PRE.format(index), step, block, "accumulated_resid"))
        labels.append(f"{index}_pre")
        if incl_mid and index < layer:
            parts.append(_get(cache, MID.format(index), step, block, "accumulated_resid"))
            labels.append(f"{index}_mid")
    stack = torch.stack([_positions(part, positions, cache) for part in parts])
    if apply_ln:
        norm = model.model.decoder.norm
        stack = stack.float() * _rms_scale(norm, stack)
    return (stack, labels) if return_labels else stack


def decompose_resid(
    model,
    cache: DenoisingCache,
    step: int,
    block: int = 0,
    layer: int | None = None,
    *,
    apply_ln: bool = False,
    positions=None,
    return_labels: bool = False,
):
    """The residual entering ``layer`` as a sum of the terms that wrote it: ``"sc_out"`` (the block's
    input: token embeddings plus the self-conditioning signal, normalised), then ``"{l}_attn_out"``
    and ``"{l}_ffn_out"`` for each layer before ``layer``, each multiplied by the layer scalars it
    passed through. ``[components, batch, pos, d_model]``; the components sum to the residual
    (and, with ``apply_ln``, to its final-norm output; ``layer`` must then be the last)."""
    layer = _layer(model, layer, "decompose_resid")
    _needs_last_layer(model, layer, apply_ln)
    parts = [_get(cache, SC_OUT, step, block, "decompose_resid").float() * _scalars_after(model, 0, layer)]
    labels = ["sc_out"]
    for index in range(layer):
        scale = _scalars_after(model, index, layer)
        parts.append(_get(cache, ATTN_OUT.format(index), step, block, "decompose_resid").float() * scale)
        parts.append(_get(cache, FFN_OUT.format(index), step, block, "decompose_resid").float() * scale)
        labels += [f"{index}_attn_out", f"{index}_ffn_out"]
    return _stacked(model, parts, labels, cache, step, block, positions, apply_ln, return_labels)


def head_results(model, cache: DenoisingCache, step: int, layer: int, block: int = 0, *, residual: bool = True):
    """Each head's output at one decoder layer: ``[batch, pos, heads, d_model]``, ``z[h] @ W_O[h]``
    (its columns of ``o_proj``). ``residual=True`` multiplies them by the post-attention norm's
    scale of this pass, so the heads sum to ``hook_attn_out``; ``False`` gives the raw slices, which
    sum to ``o_proj``'s output."""
    n = _n_layers(model)
    if not 0 <= layer < n:
        raise IndexError(f"head_results: layer {layer} out of range 0..{n - 1}")
    module = model.model.decoder.layers[layer]
    z = _get(cache, Z.format(layer), step, block, "head_results").float()  # [batch, pos, heads, d_head]
    batch, pos, heads, d_head = z.shape
    w_o = module.self_attn.o_proj.weight.float().to(z.device)  # [d_model, heads * d_head]
    per_head = torch.einsum("bphd,mhd->bphm", z, w_o.view(w_o.shape[0], heads, d_head))
    if getattr(module.self_attn.o_proj, "bias", None) is not None:
        raise ValueError("o_proj has a bias: a per-head split of it is not defined")
    if residual:
        per_head = per_head * _rms_scale(module.post_attention_layernorm, per_head.sum(2))[:, :, None, :]
    return per_head


def stack_head_results(
    model,
    cache: DenoisingCache,
    step: int,
    block: int = 0,
    layer: int | None = None,
    *,
    apply_ln: bool = False,
    positions=None,
    return_labels: bool = False,
):
    """Every head of every layer before ``layer`` (default: all), in residual units:
    ``[layers * heads, batch, pos, d_model]``, labels ``"L0H0"``, … (TransformerLens's
    ``stack_head_results``). Multiplied by the layer scalars after each layer, so with
    ``apply_ln`` each head's ``lm_head`` projection is its direct effect on the logits."""
    layer = _layer(model, layer, "stack_head_results")
    _needs_last_layer(model, layer, apply_ln)
    parts, labels = [], []
    for index in range(layer):
        heads = head_results(model, cache, step, index, block) * _scalars_after(model, index, layer)
        parts += list(heads.unbind(2))
        labels += [f"L{index}H{h}" for h in range(heads.shape[2])]
    if not parts:
        raise ValueError("stack_head_results: layer=0 has no heads before it")
    return _stacked(model, parts, labels, cache, step, block, positions, apply_ln, return_labels)
