"""Monitors that read a model's visible outputs and predict a hidden property, and how well they do.

An *output* is a sequence of visible tokens (token ids, or token strings: anything hashable); a
monitor is an object with ``score(outputs) -> np.ndarray [n]`` (higher = more likely the positive
label). Three kinds:

- :class:`KeywordMonitor` (rule, no training): 1 if the output starts with a keyword, 0.5 if the
  keyword appears later, 0 if it is absent (the toy ``mon`` task writes ``rev`` or ``keep`` first).
- :class:`TokenRuleMonitor` (rule learned from data, any vocabulary, no tokenizer): the presence of
  the single token whose presence is most label-predictive on the training outputs.
- :class:`LogisticMonitor` (trained classifier): L2 logistic regression (torch, full batch, L-BFGS
  from zeros, so deterministic) on bag-of-token counts, optionally plus (position, token) one-hots.

:class:`ConsistencyMonitor` (a reasoning check, no training): for answer-first outputs
``= ANSWER : SCRATCH ...``, 1 if the answer disagrees with the scratchpad's last value (the visible
trace of an answer the reasoning does not support), 0.5 if the output does not parse, else 0.

:class:`OrderMonitor` reads the prompt too: it compares the output's content with the prompt's,
forwards or reversed. ``hide_tokens`` removes tokens (e.g. the rule words) from outputs for the
"what is left" variants. Evaluation: :func:`auroc_or_none` (AUROC with a 95% bootstrap interval,
``None`` when one class is missing), :func:`paired_auroc_difference` (two monitors or sources on
the same prompts), :func:`roc_curve`. Draft canvases per denoising step: :func:`carry_forward` and
:func:`draft_outputs`. Figures: :func:`auroc_bars`, :func:`auroc_per_step`, :func:`roc_figure`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from diffinterp.records.decoding import output_tokens
from diffinterp.stats import BOOTSTRAP_RESAMPLES, auroc, auroc_ci

Output = Sequence[Hashable]


# ------------------------------------------------------------------------------- labels
def binary_labels(labels: Sequence[Hashable], positive: Hashable | None = None) -> tuple[np.ndarray, Hashable]:
    """Labels as 0/1 ``[n]`` (1 = ``positive``) and the positive value (default: the last in sorted order)."""
    values = sorted(set(labels), key=lambda v: (str(type(v)), v))
    if len(values) > 2:
        raise ValueError(f"a monitor predicts a binary property; got {len(values)} label values {values[:5]}")
    if positive is None:
        positive = values[-1] if values else None
    elif values and positive not in values and len(values) == 2:
        raise ValueError(f"positive label {positive!r} is not one of the labels {values}")
    return np.array([int(label == positive) for label in labels], dtype=int), positive


def hide_tokens(outputs: Iterable[Output], hidden: Iterable[Hashable]) -> list[list]:
    """``outputs`` with every token in ``hidden`` removed (what a monitor sees without the rule words)."""
    hidden = set(hidden)
    return [[token for token in output if token not in hidden] for output in outputs]


# ------------------------------------------------------------------------------- monitors
@dataclass
class KeywordMonitor:
    """Rule: score 1 if the output starts with ``keyword``, 0.5 if it contains it later, else 0."""

    keyword: Hashable
    name: str = "keyword rule"

    def score(self, outputs: Iterable[Output]) -> np.ndarray:
        def one(output):
            output = list(output)
            if output[:1] == [self.keyword]:
                return 1.0
            return 0.5 if self.keyword in output else 0.0

        return np.array([one(output) for output in outputs], dtype=float)


def _sorted_tokens(tokens: Iterable[Hashable]) -> list:
    return sorted(set(tokens), key=lambda t: (str(type(t)), t))


@dataclass
class ConsistencyMonitor:
    """Reasoning check: does the answer of ``= ANSWER : s1 ... sk`` equal the scratchpad's last value?

    Score 1 where it does not (the answer is not what the visible reasoning gives), 0 where it does,
    0.5 where the output does not have that shape. ``equals`` / ``separator``: the ``=`` and ``:`` tokens.
    """

    equals: Hashable
    separator: Hashable
    name: str = "consistency rule"

    def score(self, outputs: Iterable[Output]) -> np.ndarray:
        def one(output):
            output = list(output)
            if output[:1] != [self.equals] or self.separator not in output:
                return 0.5
            cut = output.index(self.separator)
            answer, scratch = output[1:cut], output[cut + 1 :]
            if not answer or not scratch:
                return 0.5
            return 0.0 if answer == scratch[-len(answer) :] else 1.0

        return np.array([one(output) for output in outputs], dtype=float)


@dataclass
class TokenRuleMonitor:
    """Rule learned on training outputs: the presence of one token (the most label-predictive one).

    ``fit`` picks the token whose presence has the training AUROC farthest from 0.5 (ties: the first
    token in sorted order); ``direction`` is +1 if presence predicts the positive label, -1 if it
    predicts the negative one. Needs no tokenizer. Unfitted, or fitted on one class: scores 0.5.
    """

    name: str = "learned token rule"
    token: Hashable | None = None
    direction: int = 1
    train_auroc: float | None = None

    def fit(self, outputs: Sequence[Output], labels: Sequence[int]) -> TokenRuleMonitor:
        y = np.asarray(labels, dtype=int)
        if len(outputs) != y.size:
            raise ValueError(f"{len(outputs)} outputs but {y.size} labels: give one label per output")
        self.token, self.direction, self.train_auroc = None, 1, None
        if y.size == 0 or y.min() == y.max():
            return self
        sets = [set(output) for output in outputs]
        best = 0.0
        for token in _sorted_tokens(t for output in outputs for t in output):
            area = auroc([float(token in s) for s in sets], y)
            if abs(area - 0.5) > best:
                best, self.token, self.direction, self.train_auroc = (
                    abs(area - 0.5),
                    token,
                    1 if area >= 0.5 else -1,
                    area,
                )
        return self

    def score(self, outputs: Iterable[Output]) -> np.ndarray:
        if self.token is None:
            return np.full(len(list(outputs)), 0.5)
        present = np.array([float(self.token in list(output)) for output in outputs])
        return present if self.direction > 0 else 1.0 - present


@dataclass
class LogisticMonitor:
    """L2 logistic regression on bag-of-token counts (+ ``(position, token)`` one-hots for the first
    ``positions`` positions when ``positions > 0``).

    The feature vocabulary is the set of tokens in the training outputs (unseen tokens are ignored).
    Training minimises mean binary cross-entropy + ``l2 / 2 * |w|^2`` (bias unpenalised) with full-batch
    L-BFGS from zero weights: the problem is strictly convex, so the fit is deterministic.
    ``score`` returns the logit. Fitted on one class: scores 0 (uninformative).
    """

    name: str = "logistic"
    positions: int = 0
    l2: float = 1e-2
    max_iter: int = 200
    vocabulary: dict = field(default_factory=dict)
    weight: torch.Tensor | None = None
    bias: float = 0.0

    def features(self, outputs: Iterable[Output]) -> torch.Tensor:
        """``[n, vocab + positions * vocab]`` float features of ``outputs``."""
        outputs = [list(output) for output in outputs]
        v = len(self.vocabulary)
        x = torch.zeros(len(outputs), v * (1 + self.positions))
        for row, output in enumerate(outputs):
            for pos, token in enumerate(output):
                column = self.vocabulary.get(token)
                if column is None:
                    continue
                x[row, column] += 1.0
                if pos < self.positions:
                    x[row, v * (1 + pos) + column] = 1.0
        return x

    def feature_names(self, token_name=str) -> list[str]:
        """Names of the feature columns: ``token`` (count), ``token@position`` (one-hot)."""
        tokens = [token_name(t) for t in self.vocabulary]
        return tokens + [f"{t}@{p}" for p in range(self.positions) for t in tokens]

    def fit(self, outputs: Sequence[Output], labels: Sequence[int]) -> LogisticMonitor:
        y = torch.as_tensor(np.asarray(labels, dtype=float), dtype=torch.float32)
        if len(outputs) != y.numel():
            raise ValueError(f"{len(outputs)} outputs but {y.numel()} labels: give one label per output")
        self.vocabulary = {t: i for i, t in enumerate(_sorted_tokens(t for output in outputs for t in output))}
        x = self.features(outputs)
        self.weight, self.bias = torch.zeros(x.shape[1]), 0.0
        if y.numel() == 0 or y.min() == y.max():
            return self
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        optimiser = torch.optim.LBFGS([w, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * self.l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimiser.step(closure)
        self.weight, self.bias = w.detach(), float(b.detach())
        return self

    def score(self, outputs: Iterable[Output]) -> np.ndarray:
        if self.weight is None:
            raise RuntimeError("LogisticMonitor.score before fit: call fit(outputs, labels) first")
        return (self.features(outputs) @ self.weight + self.bias).numpy().astype(float)

    def top_features(self, k: int = 5, token_name=str) -> list[tuple[str, float]]:
        """The ``k`` features with the largest absolute weights, as ``(name, weight)`` (tokens named by ``token_name``)."""
        if self.weight is None or self.weight.numel() == 0:
            return []
        order = self.weight.abs().argsort(descending=True)[:k].tolist()
        names = self.feature_names(token_name)
        return [(names[i], float(self.weight[i])) for i in order]


@dataclass
class OrderMonitor:
    """Rule that reads the prompt too: 1 if the output's content is the prompt's content reversed,
    0 if it is the prompt's content in order, 0.5 otherwise (content = tokens not in ``ignore``)."""

    ignore: frozenset = frozenset()
    name: str = "order rule (sees prompt)"

    def score(self, outputs: Iterable[Output], prompts: Iterable[Output]) -> np.ndarray:
        scores = []
        for output, prompt in zip(outputs, prompts, strict=True):
            out = [t for t in output if t not in self.ignore]
            src = [t for t in prompt if t not in self.ignore]
            scores.append(1.0 if out == src[::-1] and out != src else 0.0 if out == src else 0.5)
        return np.array(scores, dtype=float)


# ------------------------------------------------------------------------------- evaluation
def auroc_or_none(scores, labels, *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """:func:`diffinterp.stats.auroc_ci`, or ``value=None`` with a note when a class is missing."""
    y = np.asarray(labels, dtype=int)
    if y.size == 0 or y.min() == y.max():
        return {"value": None, "ci_low": None, "ci_high": None, "n": int(y.size), "n_pos": int(y.sum()),
                "note": "AUROC needs both labels among the evaluated outputs"}  # fmt: skip
    return auroc_ci(scores, y, seed=seed, resamples=resamples)


def paired_auroc_difference(scores_a, scores_b, labels, *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """AUROC(a) - AUROC(b) on the same items, with a paired, class-stratified bootstrap 95% interval.

    ``scores_a``/``scores_b``/``labels``: ``[n]``; each resample draws the same items for both.
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    y = np.asarray(labels, dtype=int)
    if not a.shape == b.shape == y.shape:
        raise ValueError(f"need one score of each kind per label; got {a.size}, {b.size} scores for {y.size} labels")
    if y.size == 0 or y.min() == y.max():
        return {"value": None, "ci_low": None, "ci_high": None, "n": int(y.size),
                "note": "AUROC needs both labels among the evaluated outputs"}  # fmt: skip
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    target = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    diffs = []
    for _ in range(resamples):
        idx = np.concatenate([pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]])
        diffs.append(auroc(a[idx], target) - auroc(b[idx], target))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"value": auroc(a, y) - auroc(b, y), "ci_low": float(low), "ci_high": float(high), "n": int(y.size)}


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates ``[k]`` as the threshold falls through the distinct scores,
    from ``(0, 0)`` to ``(1, 1)`` (ties move both rates at once)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"a ROC curve needs both classes; got {n_pos} positives and {n_neg} negatives")
    thresholds = np.unique(s)[::-1]
    tpr = [0.0] + [float(((s >= t) & (y == 1)).sum() / n_pos) for t in thresholds]
    fpr = [0.0] + [float(((s >= t) & (y == 0)).sum() / n_neg) for t in thresholds]
    return np.array(fpr), np.array(tpr)


# ------------------------------------------------------------------------------- drafts
def carry_forward(drafts: torch.Tensor, active: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
    """Per-row drafts where a row that stopped denoising keeps its last active draft.

    ``drafts``: ``[steps, batch, canvas]`` (e.g. ``traj.stack("argmax")``); ``active``: ``[steps, batch]``
    (``traj.stack("active")``). Returns ``[max(steps, n_steps), batch, canvas]``: steps past the end
    repeat the last step, so batches that ran different step counts line up.
    """
    if drafts.dim() != 3 or active.shape != drafts.shape[:2]:
        raise ValueError(
            f"drafts [steps, batch, canvas] {list(drafts.shape)} and active [steps, batch] {list(active.shape)}"
        )
    out = drafts.clone()
    for step in range(1, out.shape[0]):
        stopped = ~active[step].bool()
        out[step, stopped] = out[step - 1, stopped]
    extra = max(0, (n_steps or 0) - out.shape[0])
    return torch.cat([out, out[-1:].expand(extra, -1, -1)]) if extra else out


def draft_outputs(drafts: torch.Tensor, eos_id: int, pad_id: int) -> list[list[list[int]]]:
    """``[step][row]`` visible outputs of ``[steps, batch, canvas]`` drafts (ids up to EOS, pads dropped)."""

    return [[output_tokens(row, eos_id, pad_id) for row in step] for step in drafts]


__all__ = [
    "KeywordMonitor",
    "LogisticMonitor",
    "OrderMonitor",
    "TokenRuleMonitor",
    "auroc_or_none",
    "binary_labels",
    "carry_forward",
    "draft_outputs",
    "hide_tokens",
    "paired_auroc_difference",
    "roc_curve",
]
