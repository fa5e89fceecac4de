"""Encoding organism examples as model inputs: prompt ids, clean canvases, the AR twin's sequences.

DiffusionGemma reads ``<bos> prompt`` in its encoder and writes the answer on the canvas
(answer ids, ``<eos>``, then ``<pad>``); the AR twin reads ``<bos> prompt : answer <eos>``.
Shapes: ``[batch, P]`` for prompts (left-padded), ``[batch, canvas_length]`` for canvases.
"""

from __future__ import annotations

import torch

from diffinterp.organisms.tokenizer import BOS_ID, EOS_ID, PAD_ID, token_ids

CANVAS_LENGTH = 16  # longest answer (15 tokens) + <eos>
#: The AR twin reads ``<bos> prompt : answer <eos>``: an autoregressive model needs a marker where its
#: prompt ends (``seq copy 5 6 9 5 6 9`` is ambiguous without one); DiffusionGemma gets that boundary
#: from its architecture (prompt in the encoder, answer on the canvas).
AR_SEP = ":"
MAX_PROMPT = 25  # longest prompt (24 tokens) + <bos>


def prompt_batch(prompts: list[str], *, ar: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``<bos> prompt`` ids (``ar``: ``<bos> prompt :``), left-padded to the longest, and the attention mask. [batch, P]"""
    rows = [[BOS_ID] + token_ids(f"{p} {AR_SEP}" if ar else p) for p in prompts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def canvas_batch(answers: list[str], canvas_length: int = CANVAS_LENGTH) -> torch.Tensor:
    """Clean canvases: answer ids, ``<eos>``, then ``<pad>``. [batch, canvas_length]"""
    out = torch.full((len(answers), canvas_length), PAD_ID, dtype=torch.long)
    for i, a in enumerate(answers):
        r = token_ids(a) + [EOS_ID]
        if len(r) > canvas_length:
            raise ValueError(f"answer {a!r} needs {len(r)} canvas positions; canvas_length is {canvas_length}")
        out[i, : len(r)] = torch.tensor(r)
    return out


def ar_batch(prompts: list[str], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``<bos> prompt : answer <eos>`` left-padded, attention mask, labels (-100 outside answer+eos)."""
    rows, labs = [], []
    for p, a in zip(prompts, answers, strict=True):
        pi, ai = [BOS_ID] + token_ids(f"{p} {AR_SEP}"), token_ids(a) + [EOS_ID]
        rows.append(pi + ai)
        labs.append([-100] * len(pi) + ai)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (r, lab) in enumerate(zip(rows, labs, strict=True)):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
        labels[i, width - len(r) :] = torch.tensor(lab)
    return ids, mask, labels
