"""Token identity: what are the high-probability tokens of intermediate denoising states?

The paper's variable-transparency evidence reads the intermediate states through their most probable
tokens and asks what those tokens are. Every token whose probability at a position exceeds a
threshold (the paper: p > 0.03) at an intermediate step is a **candidate**, classified by the first
class it fits:

1. ``final``: the token the position finally holds;
2. ``final nearby``: a token some other position within ``window`` (±10) finally holds;
3. ``neighbour``: one of the ``k`` (50) nearest tokens, by cosine similarity of the input
   embeddings, to a final token at the position or within the window;
4. ``other``.

The paper reports that more than 85% of intermediate tokens with p > 0.03 fall in the first three
classes (800 chat prompts, the 26B model). Probabilities are the softmax of the raw (soft-capped)
logits of that step, before the sampler's temperature. Candidates are extracted step by step from
each step's logits as they are computed (:func:`candidates_from_logits`), so nothing vocabulary-sized
is kept across steps; nearest neighbours are computed per distinct final token in chunks of the
vocabulary (:func:`cosine_neighbours`).

Shapes: ``B`` rows, ``P`` canvas positions, ``V`` vocabulary; candidates are flat ``[N]`` tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from diffinterp.stats import proportion

CLASSES = ("final", "final nearby", "neighbour", "other")
PAPER_THRESHOLD = 0.03
PAPER_WINDOW = 10
PAPER_NEIGHBOURS = 50
PAPER_SHARE = 0.85  # more than 85% fall in the first three classes


@dataclass
class Candidates:
    """High-probability tokens of intermediate states: ``step``, ``row``, ``position``, ``token``
    (``LongTensor [N]``) and ``prob`` (``FloatTensor [N]``)."""

    step: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    row: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    position: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    token: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    prob: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def __len__(self) -> int:
        return int(self.token.numel())

    @classmethod
    def concat(cls, parts: Iterable[Candidates]) -> Candidates:
        parts = list(parts)
        if not parts:
            return cls()
        return cls(
            *(torch.cat([getattr(p, name) for p in parts]) for name in ("step", "row", "position", "token", "prob"))
        )

    def keep(self, mask: torch.Tensor) -> Candidates:
        return Candidates(self.step[mask], self.row[mask], self.position[mask], self.token[mask], self.prob[mask])


def candidates_from_logits(
    logits: torch.Tensor, step: int, threshold: float = PAPER_THRESHOLD, rows: torch.Tensor | None = None,
    chunk: int = 16,
) -> Candidates:  # fmt: skip
    """Tokens with probability above ``threshold`` in one step's ``logits`` ``[B, P, V]``, for the
    ``rows`` (a ``[B]`` bool mask, default all) still denoising; positions ``chunk`` at a time, so at
    most ``B x chunk x V`` probabilities exist at once."""
    batch, positions, _ = logits.shape
    rows = torch.ones(batch, dtype=torch.bool) if rows is None else rows.bool().cpu()
    parts = []
    for start in range(0, positions, chunk):
        probs = logits[:, start : start + chunk].float().softmax(-1)
        b, p, v = (probs > threshold).nonzero(as_tuple=True)
        keep = rows[b.cpu()]
        b, p, v = b.cpu()[keep], p.cpu()[keep], v.cpu()[keep]
        prob = probs[b.to(probs.device), p.to(probs.device), v.to(probs.device)].cpu()
        parts.append(Candidates(torch.full_like(b, step), b, p + start, v, prob))
    return Candidates.concat(parts)


def cosine_neighbours(embedding: torch.Tensor, tokens: Iterable[int], k: int = PAPER_NEIGHBOURS,
                      chunk: int = 65536) -> dict[int, frozenset[int]]:  # fmt: skip
    """The ``k`` tokens nearest to each of ``tokens`` by cosine similarity of the rows of
    ``embedding`` ``[V, d]`` (the token itself excluded), computed ``chunk`` vocabulary rows at a time."""
    tokens = sorted(set(int(t) for t in tokens))
    if not tokens:
        return {}
    with torch.no_grad():
        queries = torch.nn.functional.normalize(embedding[tokens].float(), dim=-1)  # [T, d]
        best_values = torch.full((len(tokens), k + 1), -2.0)
        best_index = torch.zeros((len(tokens), k + 1), dtype=torch.long)
        for start in range(0, embedding.shape[0], chunk):
            block = torch.nn.functional.normalize(embedding[start : start + chunk].float(), dim=-1)
            sims = (queries @ block.T).cpu()  # [T, chunk]
            values = torch.cat([best_values, sims], 1)
            index = torch.cat([best_index, torch.arange(start, start + block.shape[0]).expand(len(tokens), -1)], 1)
            top = values.topk(min(k + 1, values.shape[1]), dim=1)
            best_values, best_index = top.values, index.gather(1, top.indices)
    return {t: frozenset([i for i in best_index[n].tolist() if i != t][:k]) for n, t in enumerate(tokens)}


def window_tokens(final: torch.Tensor, window: int = PAPER_WINDOW, ignore: Sequence[int] = ()) -> list[list[set[int]]]:
    """Per row and position, the final tokens at the *other* positions within ``window`` (``ignore``d
    tokens, e.g. pad/EOS, left out). ``final`` ``[B, P]``."""
    ignore = set(ignore)
    rows = final.tolist()
    out = []
    for row in rows:
        out.append([
            {row[j] for j in range(max(0, p - window), min(len(row), p + window + 1)) if j != p and row[j] not in ignore}
            for p in range(len(row))
        ])  # fmt: skip
    return out


def classify(
    candidates: Candidates,
    final: torch.Tensor,
    neighbours: dict[int, frozenset[int]],
    *,
    window: int = PAPER_WINDOW,
    ignore: Sequence[int] = (),
) -> torch.Tensor:
    """The class index (into :data:`CLASSES`) of every candidate: ``LongTensor [N]``. ``final``
    ``[B, P]``: the rows' final canvases; ``neighbours``: :func:`cosine_neighbours` of the final tokens."""
    nearby = window_tokens(final, window, ignore)
    finals = final.tolist()
    out = torch.full((len(candidates),), CLASSES.index("other"), dtype=torch.long)
    for i, (b, p, token) in enumerate(
        zip(candidates.row.tolist(), candidates.position.tolist(), candidates.token.tolist(), strict=True)
    ):
        own = finals[b][p]
        if token == own:
            out[i] = 0
        elif token in nearby[b][p]:
            out[i] = 1
        elif any(token in neighbours.get(f, ()) for f in (nearby[b][p] | ({own} - set(ignore)))):
            out[i] = 2
    return out


def class_shares(classes: torch.Tensor, steps: torch.Tensor | None = None) -> dict:
    """Shares of each class (Wilson 95% CIs), the share in the first three (the paper's 85%), and the
    same per step when ``steps`` ``[N]`` is given."""

    def shares(mask: torch.Tensor) -> dict:
        picked = classes[mask]
        n = int(picked.numel())
        out = {name: proportion(int((picked == i).sum()), n) for i, name in enumerate(CLASSES)}
        out["first three"] = proportion(int((picked < 3).sum()), n)
        return out

    result = shares(torch.ones_like(classes, dtype=torch.bool))
    if steps is not None:
        result["per_step"] = {str(s): shares(steps == s) for s in sorted(set(steps.tolist()))}
    return result
