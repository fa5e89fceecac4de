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
