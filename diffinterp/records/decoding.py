"""Reading generated tokens: special ids, a row's content up to EOS, readable token labels.

Duck-typed on the model (anything with ``.model.generation_config``, ``.config`` and
``.tokenizer``, as :class:`~diffinterp.core.hooked.HookedDiffusionGemma` has), so records and
detectors decode outputs without importing the model layer.
"""

from __future__ import annotations

import torch


def token_labels(tokens, tokenizer=None) -> list[str]:
    """Readable labels for token ids: the tokenizer's pieces, or ``#id`` for ids it lacks."""
    ids = [int(t) for t in tokens]
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    return [tokenizer.convert_ids_to_tokens(i) or f"#{i}" for i in ids]


def special_ids(hm) -> tuple[int, int]:
    """``(eos_id, pad_id)`` of ``hm``'s generation config (eos falls back to the config's)."""
    gen = hm.model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else hm.config.text_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    pad = gen.pad_token_id if gen.pad_token_id is not None else hm.config.text_config.pad_token_id
    return int(eos), int(pad if pad is not None else eos)


def output_tokens(tokens: torch.Tensor, eos_id: int, pad_id: int) -> list[int]:
    """The content of one generated row: ids up to the first ``eos_id``, pads dropped."""
    out = []
    for token in tokens.tolist():
        if token == eos_id:
            break
        if token != pad_id:
            out.append(token)
    return out


def decode_output(hm, tokens: torch.Tensor) -> str:
    """One generated row as text: tokens up to EOS joined by spaces (ids as ``<id>`` without a tokenizer)."""
    eos, pad = special_ids(hm)
    ids = output_tokens(tokens, eos, pad)
    if hm.tokenizer is None:
        return " ".join(f"<{i}>" for i in ids)
    return " ".join(hm.tokenizer.convert_ids_to_tokens(ids))


def attention_keys(trajectory, block: int, step: int, n_keys: int, row: int = 0) -> list[tuple[str, int, int]]:
    """What each key column of a decoder ``attn.hook_pattern`` ``[batch, heads, query, n_keys]`` is:
    ``(kind, position, token_id)`` per column, ``kind`` ``"prefix"`` or ``"canvas"``.

    Key order: the cached prefix first (the prompt in block 0, prompt and earlier canvases after),
    then the canvas of that step. A sliding-window layer caches only the last ``sliding_window - 1``
    prefix tokens, so its pattern has fewer prefix columns than a full layer's, and prefix column
    k of a sliding layer is not the same token as column k of a full layer: the columns are the
    *last* ``n_keys - canvas`` tokens of the prefix (left padding included)."""
    record = trajectory.block(block)
    canvas = trajectory.canvas_length
    n_prefix = n_keys - canvas
    if not 0 <= n_prefix <= record.prefix_len:
        raise ValueError(
            f"a pattern with {n_keys} keys does not fit block {block}: it has a {record.prefix_len}-token prefix "
            f"and a {canvas}-token canvas (a decoder pattern has canvas + at most prefix keys)"
        )
    prefix = trajectory.sequences[row, record.prefix_len - n_prefix : record.prefix_len].tolist()
    start = record.prefix_len - n_prefix
    canvas_in = trajectory.step(block, step).canvas_in[row].tolist()
    return [("prefix", start + k, t) for k, t in enumerate(prefix)] + [
        ("canvas", k, t) for k, t in enumerate(canvas_in)
    ]
