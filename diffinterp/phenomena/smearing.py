"""Token and sequence smearing: a token (or a run of tokens) spread over, or shifted across,
neighbouring canvas positions in an intermediate canvas before it resolves into one place.

Detectors are pure functions of token ids (and, for the soft variant, probabilities). Shapes:

    canvas, final, reference                  LongTensor  [pos]                 one canvas
    canvases                                  LongTensor  [steps, batch, pos]   e.g. ``traj.stack("argmax", b)``
    finals                                    LongTensor  [batch, pos]          ``traj.blocks[b].final_canvas``
    active                                    BoolTensor  [steps, batch]        ``traj.stack("active", b)``
    probs                                     FloatTensor [pos, vocab]          softmax of one step's logits

Definitions (``f`` = the final canvas, ``c`` = an intermediate canvas, ``w`` = ``window``):

* **token smear** at final position ``p`` holding token ``v``: ``v`` is not ignored (pad / EOS by
  default), ``f`` holds ``v`` exactly once in ``[p-w, p+w]`` (so it resolved to one place and is
  not a token the answer legitimately repeats there), and ``c`` holds ``v`` on a run of at least
  ``min_width`` adjacent positions inside ``[p-w, p+w]`` that contains ``p`` or touches it
  (starts at ``p+1`` or ends at ``p-1``). Every run position other than ``p`` has ``f != v``.
* **soft token smear** (recorded logits): same ``p, v``; the probability mass of ``v`` at the other
  positions of ``[p-w, p+w]``, ``sum_j probs[j, v]``, is at least ``threshold``.
* **sequence smear** by shift ``k`` (``0 < |k| <= max_shift``): a maximal run of at least
  ``min_run`` consecutive positions ``i`` with ``c[i] == ref[i + k]`` and ``ref[i + k]`` not
  ignored, holding at least two distinct tokens, of which at most ``max_unshifted`` (a fraction,
  default one half) already match ``ref`` unshifted (so a run of one repeated token, or a stretch
  that is mostly in place already, e.g. a periodic one, is never a shift).
  ``k > 0``: the run sits ``k`` positions left of where ``ref`` holds it. ``ref`` is the final
  canvas, or the next step's canvas.

Only **intermediate** canvases are searched: steps a row ran before its last step (``active`` and
a later active step exists), in blocks the row still generates (no EOS in an earlier block).

**Alignment mass** (a planted smear's ground truth): when a task has several valid answers that
are shifts of each other (an optional leading spacer), :func:`alignment_mass` gives, at every step,
the mean probability the model puts on each alignment's tokens over the positions they share;
:func:`alignment_share` the second alignment's share of the two. A 50/50 superposition of two
alignments reads 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch

from diffinterp import stats

KINDS = ("token", "token_sampled", "soft", "sequence", "sequence_next")
RELATIVE_BINS = 4


# ------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class TokenSmear:
    """Token ``token`` spread over ``positions`` at ``step``; the final canvas holds it only at ``final_position``."""

    row: int
    step: int
    token: int
    final_position: int
    positions: tuple[int, ...]
    block: int = 0
    source: str = "argmax"

    @property
    def width(self) -> int:
        return len(self.positions)


@dataclass(frozen=True)
class SoftSmear:
    """Probability mass ``mass`` of ``token`` at the neighbours of ``final_position`` (peak at ``peak_position``)."""

    row: int
    step: int
    token: int
    final_position: int
    mass: float
    peak_position: int
    block: int = 0


@dataclass(frozen=True)
class SequenceSmear:
    """Run ``canvas[start : start + length]`` equal to ``reference[start + shift : ...]`` at ``step``."""

    row: int
    step: int
    shift: int
    start: int
    length: int
    tokens: tuple[int, ...]
    block: int = 0
    reference: str = "final"

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.start + self.length))


# ------------------------------------------------------------------------------- one canvas
def _ids(x) -> list[int]:
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise ValueError(f"expected one canvas of shape [pos], got shape {list(x.shape)}")
        return x.tolist()
    return [int(t) for t in x]


def _check_pair(canvas: list[int], final: list[int]) -> None:
    if len(canvas) != len(final):
        raise ValueError(f"canvas has {len(canvas)} positions but the reference has {len(final)}: they must match")


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """Maximal runs of true flags as inclusive ``(start, end)`` pairs."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def _single_in_window(final: list[int], p: int, window: int) -> tuple[int, int] | None:
    """The window ``[lo, hi]`` around ``p`` if ``final`` holds ``final[p]`` only at ``p`` there."""
    lo, hi = max(0, p - window), min(len(final) - 1, p + window)
    return (lo, hi) if final[lo : hi + 1].count(final[p]) == 1 else None


def canvas_token_smears(
    canvas, final, *, window: int = 2, min_width: int = 2, ignore: Iterable[int] = ()
) -> list[tuple[int, int, tuple[int, ...]]]:
    """Token smears of one intermediate ``canvas`` against ``final`` (both ``[pos]``): ``(token, p, positions)``."""
    if window < 1 or min_width < 2:
        raise ValueError(f"need window >= 1 and min_width >= 2, got window={window}, min_width={min_width}")
    c, f = _ids(canvas), _ids(final)
    _check_pair(c, f)
    ignore = set(ignore)
    found, seen = [], set()
    for p, v in enumerate(f):
        bounds = None if v in ignore else _single_in_window(f, p, window)
        if bounds is None:
            continue
        lo, hi = bounds
        runs = [(lo + a, lo + b) for a, b in _runs([t == v for t in c[lo : hi + 1]])]
        runs = [(a, b) for a, b in runs if a - 1 <= p <= b + 1 and b - a + 1 >= min_width]
        if not runs:
            continue
        a, b = max(runs, key=lambda run: (run[1] - run[0], run[0] <= p <= run[1]))
        positions = tuple(range(a, b + 1))
        if (v, positions) not in seen:  # a run between two far copies of v is one smear
            seen.add((v, positions))
            found.append((v, p, positions))
    return found


def canvas_soft_smears(
    probs: torch.Tensor, final, *, window: int = 2, threshold: float = 0.3, ignore: Iterable[int] = ()
) -> list[tuple[int, int, float, int]]:
    """Soft token smears of one step's ``probs`` ``[pos, vocab]``: ``(token, p, mass, peak_position)``."""
    f = _ids(final)
    if probs.dim() != 2 or probs.shape[0] != len(f):
        raise ValueError(f"probs must be [pos={len(f)}, vocab], got shape {list(probs.shape)}")
    ignore = set(ignore)
    found = []
    for p, v in enumerate(f):
        bounds = None if v in ignore else _single_in_window(f, p, window)
        if bounds is None:
            continue
        lo, hi = bounds
        neighbours = [j for j in range(lo, hi + 1) if j != p]
        mass = probs[neighbours, v].float()
        if float(mass.sum()) >= threshold:
            found.append((v, p, float(mass.sum()), neighbours[int(mass.argmax())]))
    return found


def canvas_sequence_smears(
    canvas,
    reference,
    *,
    min_run: int = 3,
    max_shift: int = 3,
    max_unshifted: float = 0.5,
    ignore: Iterable[int] = (),
) -> list[tuple[int, int, int]]:
    """Shifted runs of one ``canvas`` against ``reference`` (both ``[pos]``): ``(shift, start, length)``."""
    if min_run < 2 or max_shift < 1:
        raise ValueError(f"need min_run >= 2 and max_shift >= 1, got min_run={min_run}, max_shift={max_shift}")
    c, r = _ids(canvas), _ids(reference)
    _check_pair(c, r)
    ignore, n = set(ignore), len(c)
    found = []
    for k in [s for s in range(-max_shift, max_shift + 1) if s != 0]:
        flags = [0 <= i + k < n and r[i + k] not in ignore and c[i] == r[i + k] for i in range(n)]
        for a, b in _runs(flags):
            run = range(a, b + 1)
            in_place = sum(c[i] == r[i] for i in run)
            if len(run) < min_run or len({c[i] for i in run}) < 2 or in_place > max_unshifted * len(run):
                continue
            found.append((k, a, len(run)))
    return found


# ------------------------------------------------------------------------------- a batch of steps
def intermediate_mask(active: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
    """``[steps, batch]``: the row ran this step and a later one (so the canvas is not its last).

    ``live`` (``[batch]``) drops rows whose sequence already ended in an earlier block.
    """
    if active.dim() != 2:
        raise ValueError(f"active must be [steps, batch], got shape {list(active.shape)}")
    active = active.bool()
    later = torch.flip(torch.cummax(torch.flip(active.int(), [0]), 0).values, [0]).bool()
    mask = active & torch.cat([later[1:], torch.zeros_like(later[:1])])
    return mask if live is None else mask & live.bool()[None]


def live_rows(finals: Sequence[torch.Tensor], eos_id: int) -> list[torch.Tensor]:
    """Per block, ``[batch]`` True where no earlier block's final canvas (``[batch, pos]``) holds ``eos_id``."""
    out, ended = [], None
    for final in finals:
        out.append(torch.ones(final.shape[0], dtype=torch.bool) if ended is None else ~ended)
        hit = (final == eos_id).any(-1).cpu()
        ended = hit if ended is None else ended | hit
    return out


@dataclass
class SmearScan:
    """Events of one kind in a set of runs, and every intermediate canvas that was searched.

    ``canvases``: ``(row, block, step, relative_step)`` per searched canvas (``relative_step`` =
    step / the row's last step in that block, in ``[0, 1)``); ``counts``: events in each of them.
    """

    kind: str
    events: list = field(default_factory=list)
    canvases: list[tuple[int, int, int, float]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def extend(self, other: SmearScan, row_offset: int = 0) -> SmearScan:
        """Append ``other`` (rows shifted by ``row_offset``, e.g. the batch's first prompt index)."""
        self.events += [replace(e, row=e.row + row_offset) for e in other.events]
        self.canvases += [(r + row_offset, b, s, rel) for r, b, s, rel in other.canvases]
        self.counts += other.counts
        return self


def scan_block(
    kind: str,
    canvases: torch.Tensor,
    finals: torch.Tensor,
    active: torch.Tensor,
    *,
    live: torch.Tensor | None = None,
    block: int = 0,
    window: int = 2,
    min_width: int = 2,
    min_run: int = 3,
    max_shift: int = 3,
    max_unshifted: float = 0.5,
    threshold: float = 0.3,
    ignore: Iterable[int] = (),
) -> SmearScan:
    """Search every intermediate canvas of one block for ``kind`` (one of :data:`KINDS`).

    ``canvases``: ``[steps, batch, pos]`` token ids (argmax or sampled), or for ``kind="soft"``
    ``[steps, batch, pos, vocab]`` logits. ``sequence_next`` compares step ``s`` with ``s + 1``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown smear kind {kind!r}; choose one of {', '.join(KINDS)}")
    steps, batch = active.shape
    if canvases.shape[:2] != (steps, batch) or finals.shape != (batch, canvases.shape[2]):
        raise ValueError(
            f"shapes disagree: canvases {list(canvases.shape)}, finals {list(finals.shape)}, active {list(active.shape)};"
            " need canvases [steps, batch, pos(, vocab)], finals [batch, pos], active [steps, batch]"
        )
    mask = intermediate_mask(active, live)
    last = torch.where(active.bool(), torch.arange(steps)[:, None], -1).max(0).values
    scan = SmearScan(kind)
    for s, row in mask.nonzero().tolist():
        canvas, final = canvases[s, row], finals[row]
        if kind in ("token", "token_sampled"):
            hits = canvas_token_smears(canvas, final, window=window, min_width=min_width, ignore=ignore)
            source = "argmax" if kind == "token" else "sampled"
            events = [TokenSmear(row, s, v, p, pos, block, source) for v, p, pos in hits]
        elif kind == "soft":
            probs = torch.softmax(canvas.float(), -1)
            hits = canvas_soft_smears(probs, final, window=window, threshold=threshold, ignore=ignore)
            events = [SoftSmear(row, s, v, p, m, peak, block) for v, p, m, peak in hits]
        else:
            reference = final if kind == "sequence" else canvases[s + 1, row]
            hits = canvas_sequence_smears(
                canvas, reference, min_run=min_run, max_shift=max_shift, max_unshifted=max_unshifted, ignore=ignore
            )
            ref_name = "final" if kind == "sequence" else "next"
            events = [
                SequenceSmear(row, s, k, a, n, tuple(canvas[a : a + n].tolist()), block, ref_name) for k, a, n in hits
            ]
        scan.events += events
        scan.canvases.append((row, block, s, s / int(last[row])))
        scan.counts.append(len(events))
    return scan


def scan_trajectory(trajectory, kind: str, *, eos_id: int | None = None, **options) -> SmearScan:
    """:func:`scan_block` over every block of a :class:`~diffinterp.records.trajectory.Trajectory`.

    ``kind`` picks the canvases: ``token`` / ``sequence`` / ``sequence_next`` the argmax canvas,
    ``token_sampled`` the sampled one, ``soft`` the recorded logits (``record_logits=True``).
    """
    field_name = {"token_sampled": "sampled", "soft": "logits"}.get(kind, "argmax")
    finals = [record.final_canvas.cpu() for record in trajectory.blocks]
    lives = live_rows(finals, eos_id) if eos_id is not None else [None] * len(finals)
    scan = SmearScan(kind)
    for index, record in enumerate(trajectory.blocks):
        canvases = trajectory.stack(field_name, index).cpu()
        active = trajectory.stack("active", index).cpu()
        scan.extend(scan_block(kind, canvases, finals[index], active, live=lives[index], block=record.block, **options))
    return scan


def displacement_counts(
    canvases: torch.Tensor,
    finals: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_distance: int = 4,
    ignore: Iterable[int] = (),
    distinct: bool = True,
) -> dict[int, tuple[int, int]]:
    """How often a wrong token is the final token ``d`` positions away: ``{d: (hits, n)}``.

    Over the positions ``i`` of the canvases selected by ``mask`` (``[steps, batch]``) where the
    canvas (``[steps, batch, pos]``) is wrong (``c[i] != f[i]``, ``f[i]`` not ignored) and
    ``f[i + d]`` exists and is not ignored: ``hits`` counts ``c[i] == f[i + d]``. A peak at
    ``d = +-1`` over larger ``|d|`` is smearing in aggregate (chance would be flat in ``d``). With
    ``distinct`` each (row, position, wrong token) counts once however many steps it persists, so
    one row stuck on an error for many steps does not dominate.
    """
    if (
        canvases.dim() != 3
        or finals.shape != (canvases.shape[1], canvases.shape[2])
        or mask.shape != canvases.shape[:2]
    ):
        raise ValueError(
            f"need canvases [steps, batch, pos], finals [batch, pos], mask [steps, batch]; got "
            f"{list(canvases.shape)}, {list(finals.shape)}, {list(mask.shape)}"
        )
    ignored = torch.isin(finals, torch.tensor(sorted(set(ignore)), dtype=finals.dtype))
    wrong = (canvases != finals[None]) & mask.bool()[..., None] & ~ignored[None]
    n_pos, out = finals.shape[1], {}
    cell = torch.arange(finals.numel()).view_as(finals)[None].expand_as(canvases)
    keys = cell * (int(canvases.max()) + 1) + canvases if distinct else torch.arange(canvases.numel()).view_as(canvases)
    for d in [k for k in range(-max_distance, max_distance + 1) if k != 0]:
        index = torch.arange(n_pos) + d
        valid = (index >= 0) & (index < n_pos)
        shifted = finals[:, index.clamp(0, n_pos - 1)]
        ok = wrong & (valid[None] & ~ignored[:, index.clamp(0, n_pos - 1)])[None]
        hit = ok & (canvases == shifted[None])
        out[d] = (keys[hit].unique().numel(), keys[ok].unique().numel())
    return out


# ------------------------------------------------------------------------------- rates
def row_flags(scan: SmearScan, rows: Sequence[int]) -> list[bool]:
    """For each of ``rows``: whether it has at least one event."""
    hit = {e.row for e in scan.events}
    return [row in hit for row in rows]


def smear_rates(scan: SmearScan, rows: Sequence[int]) -> dict:
    """Rates over the samples ``rows`` (95% CIs): samples with >= 1 event, intermediate canvases with
    >= 1 event, events per intermediate canvas, and per step / per relative-step bin."""
    keep = set(rows)
    picked = [(c, k) for c, k in zip(scan.canvases, scan.counts, strict=True) if c[0] in keep]
    per_step: dict[int, list[bool]] = {}
    per_bin: dict[int, list[bool]] = {}
    for (_, _, step, rel), count in picked:
        per_step.setdefault(step, []).append(count > 0)
        per_bin.setdefault(min(RELATIVE_BINS - 1, int(rel * RELATIVE_BINS)), []).append(count > 0)
    return {
        "samples": stats.proportion_of(row_flags(scan, list(keep))),
        "canvases": stats.proportion_of([k > 0 for _, k in picked]),
        "events_per_canvas": stats.mean_ci([k for _, k in picked]),
        "n_events": sum(k for _, k in picked),
        "per_step": {s: stats.proportion_of(v) for s, v in sorted(per_step.items())},
        "per_relative_step": {
            f"{b / RELATIVE_BINS:.2f}-{(b + 1) / RELATIVE_BINS:.2f}": stats.proportion_of(v)
            for b, v in sorted(per_bin.items())
        },
    }


def alignment_mass(probs: torch.Tensor, alignments: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """Mean probability of each alignment's tokens: ``probs`` ``[S, B, P, V]`` (softmax of each step's
    logits), ``alignments[b]`` the token-id lists of row ``b``'s valid answers (each ending in EOS);
    the mean runs over the positions every alignment of the row covers. ``[S, B, A]``."""
    steps, batch, positions, _ = probs.shape
    if len(alignments) != batch:
        raise ValueError(f"need one list of alignments per row: {len(alignments)} for {batch} rows")
    width = len(alignments[0])
    out = torch.zeros(steps, batch, width)
    for b, options in enumerate(alignments):
        if len(options) != width:
            raise ValueError(f"every row needs the same number of alignments ({width}); row {b} has {len(options)}")
        common = min(min(len(tokens) for tokens in options), positions)
        for a, tokens in enumerate(options):
            index = torch.tensor(list(tokens[:common]), device=probs.device)
            picked = probs[:, b, torch.arange(common, device=probs.device), index]  # [S, common]
            out[:, b, a] = picked.float().mean(-1).cpu()
    return out


def alignment_share(mass: torch.Tensor, which: int = 1) -> torch.Tensor:
    """Alignment ``which``'s share of the total mass of the first two: ``[S, B]`` from ``[S, B, A]``."""
    total = mass[..., 0] + mass[..., 1]
    return mass[..., which] / total.clamp(min=1e-12)


__all__ = [
    "alignment_mass",
    "alignment_share",
    "KINDS",
    "SequenceSmear",
    "SmearScan",
    "SoftSmear",
    "TokenSmear",
    "canvas_sequence_smears",
    "canvas_soft_smears",
    "displacement_counts",
    "canvas_token_smears",
    "intermediate_mask",
    "live_rows",
    "row_flags",
    "scan_block",
    "scan_trajectory",
    "smear_rates",
]
