"""Activation shapes of every hook point, computed from the config alone.

Used to list hooks of the real 26B model on the meta device, and to estimate a cache's size before
a run. Tests check these formulas against shapes recorded on real runs.
"""

from __future__ import annotations

import re

from transformers import DiffusionGemmaConfig

Shape = tuple[int, ...]


def _attention_dims(config: DiffusionGemmaConfig, layer: int) -> tuple[int, int, int]:
    text = config.text_config
    per_layer = text.per_layer_config[layer]
    return text.num_attention_heads, per_layer.num_key_value_heads, per_layer.head_dim


def visible_kv(config: DiffusionGemmaConfig, layer: int, cached: int, new: int) -> int:
    """Keys attended by ``new`` query tokens at ``layer`` when ``cached`` tokens precede them.

    Sliding layers keep only the last ``sliding_window - 1`` cached tokens (DynamicSlidingWindowLayer).
    """
    text = config.text_config
    if text.layer_types[layer] == "sliding_attention":
        cached = min(cached, text.sliding_window - 1)
    return cached + new


def hook_shape(
    config: DiffusionGemmaConfig, name: str, *, batch: int = 1, prompt_len: int = 16, block: int = 0
) -> Shape:
    """Shape of hook ``name`` in ``block`` for a batch of ``batch`` prompts of ``prompt_len`` tokens.

    Decoder hooks see the canvas; encoder hooks see the prompt (block 0) or the previous canvas.
    """
    text = config.text_config
    canvas = config.canvas_length
    stack = name.split(".", 1)[0]
    if stack == "decoder":
        pos, cached = canvas, prompt_len + block * canvas
    elif stack == "encoder":
        pos = prompt_len if block == 0 else canvas
        cached = 0 if block == 0 else prompt_len + (block - 1) * canvas
    else:
        raise KeyError(f"hook name '{name}' does not start with 'decoder.' or 'encoder.'")
    d_model = text.hidden_size
    match = re.search(r"\.blocks\.(\d+)\.", name)
    leaf = name.rsplit(".", 1)[-1]
    if match is not None:
        layer = int(match.group(1))
        n_heads, n_kv, d_head = _attention_dims(config, layer)
        if leaf in ("hook_q", "hook_z"):
            return (batch, pos, n_heads, d_head)
        if leaf in ("hook_k", "hook_v"):
            return (batch, pos, n_kv, d_head)
        if leaf == "hook_pattern":
            return (batch, n_heads, pos, visible_kv(config, layer, cached, pos))
        if leaf == "hook_router_probs":
            return (batch, pos, text.num_experts)
        if leaf in ("hook_topk_idx", "hook_topk_weights"):
            return (batch, pos, text.top_k_experts)
        return (batch, pos, d_model)
    if leaf == "hook_logits":
        return (batch, pos, text.vocab_size)
    return (batch, pos, d_model)
