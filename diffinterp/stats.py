"""Statistics the case studies report: proportions, means and AUROCs with 95% confidence intervals.

Every function returns a plain ``dict`` (``value``, ``ci_low``, ``ci_high``, ``n``) so results
drop straight into ``metrics.json``. Intervals: Wilson score for proportions (good at 0% and
100%, where the normal interval collapses), a seeded percentile bootstrap for means and AUROC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959964
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for ``k`` successes in ``n`` trials (``(0, 1)`` when ``n == 0``)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= successes <= trials, got {k} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(k: int, n: int) -> dict:
    """``k / n`` with its Wilson interval; ``value`` is ``None`` when ``n == 0`` (nothing to measure)."""
    low, high = wilson_interval(int(k), int(n))
    return {"value": (k / n) if n else None, "ci_low": low, "ci_high": high, "n": int(n), "k": int(k)}


def proportion_of(flags: Sequence[bool]) -> dict:
    """:func:`proportion` of the true entries of ``flags``."""
    flags = [bool(f) for f in flags]
    return proportion(sum(flags), len(flags))


def mean_ci(values: Sequence[float], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Mean with a seeded percentile-bootstrap 95% interval (``None`` values when empty)."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"value": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(x.size)}


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2.

    ``labels`` are 0/1. Computed from average ranks (Mann-Whitney U), exact with ties.
    """
    s = np.asarray(list(scores), dtype=float)
    y = np.asarray(list(labels), dtype=int)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels: give one score per label")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got values {sorted(set(np.unique(y).tolist()))}")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positives and {n_neg} negatives")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average rank of each tie group, 1-based
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auroc_ci(
    scores: Sequence[float], labels: Sequence[int], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> dict:
    """AUROC with a stratified percentile-bootstrap 95% interval (classes resampled separately)."""
    s = np.asarray(list(scores), dtype=float)
    y = np.asarray(list(labels), dtype=int)
    value = auroc(s, y)
    rng = np.random.default_rng(seed)
    pos, neg = s[y == 1], s[y == 0]
    boots = []
    for _ in range(resamples):
        p = pos[rng.integers(0, pos.size, pos.size)]
        q = neg[rng.integers(0, neg.size, neg.size)]
        boots.append(auroc(np.concatenate([p, q]), np.r_[np.ones(p.size), np.zeros(q.size)]))
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"value": value, "ci_low": float(low), "ci_high": float(high), "n": int(y.size), "n_pos": int(pos.size)}


__all__ = ["auroc", "auroc_ci", "mean_ci", "proportion", "proportion_of", "wilson_interval"]
