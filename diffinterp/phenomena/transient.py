"""Transient tokens: content that appears in an intermediate canvas and is later overwritten.

A later denoising step can read a token of step ``s`` through two channels:

- the **canvas**: step ``s+1`` embeds ``canvas_out[s]`` (= its ``canvas_in``). Only *accepted*
  positions carry the model's own token there; the others are uniform renoising draws.
- **self-conditioning**: step ``s+1`` also receives ``softmax(tempered logits of s) @ E * scale``,
  so the argmax of step ``s`` (and every other likely token) reaches it even when not accepted.

A *transient token* is a maximal run of steps ``first..last`` in which one content token (not
pad/eos) sits at one position of one row, in the accepted canvas or in the argmax canvas, and
differs from that position's final token. Its **kind** is ``"canvas"`` when it was in the accepted
canvas at some step of the run (read through both channels), else ``"argmax"`` (read through
self-conditioning only). The steps that read it are ``first+1 .. last+1`` (while the row is still
denoising).

The causal test (:func:`ablation_hooks`) hides a token from the steps that read it, in a replay
of the run with the same random draws: at each reading step, where the canvas embedding at the
position equals the token's embedding it is replaced by another real token's embedding, and the
token's probability is removed from the self-conditioning distribution at the position (the rest
renormalised, recomputed from that run's own previous logits).

Shapes: ``argmax``, ``canvas_out``, ``accepted`` are ``[steps, batch, pos]``; ``active`` is
``[steps, batch]``; ``final`` is ``[batch, pos]``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from diffinterp import stats
from diffinterp.records.trajectory import Trajectory

KINDS = ("canvas", "argmax")


@dataclass(frozen=True)
class TransientToken:
    """One transient token: ``token`` at canvas position ``pos`` of ``row`` in ``block``, present
    from step ``first`` to ``last`` (inclusive), of ``kind`` ``"canvas"`` or ``"argmax"``.
    ``final`` is the token the position ends with; ``role`` a free annotation (see :func:`token_role`)."""

    row: int
    block: int
    pos: int
    token: int
    first: int
    last: int
    kind: str
    final: int
    role: str = "unknown"

    def reading_steps(self, n_active: int) -> tuple[int, ...]:
        """Steps that read it: ``first+1 .. last+1``, cut at the row's ``n_active`` denoising steps."""
        return tuple(range(self.first + 1, min(self.last + 2, n_active)))


def _check_shapes(argmax, canvas_out, accepted, active, final) -> None:
    if argmax.dim() != 3 or canvas_out.shape != argmax.shape or accepted.shape != argmax.shape:
        raise ValueError(
            f"argmax, canvas_out, accepted must all be [steps, batch, pos]; got {list(argmax.shape)}, "
            f"{list(canvas_out.shape)}, {list(accepted.shape)}"
        )
    if active.shape != argmax.shape[:2]:
        raise ValueError(f"active must be [steps, batch] = {list(argmax.shape[:2])}, got {list(active.shape)}")
    if final.shape != argmax.shape[1:]:
        raise ValueError(f"final must be [batch, pos] = {list(argmax.shape[1:])}, got {list(final.shape)}")


def transient_masks(
    argmax: torch.Tensor,
    canvas_out: torch.Tensor,
    accepted: torch.Tensor,
    active: torch.Tensor,
    final: torch.Tensor,
    special: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a step holds a transient token: ``(canvas, argmax)`` BoolTensors ``[steps, batch, pos]``.

    ``canvas``: an accepted content token of ``canvas_out`` that differs from ``final``;
    ``argmax``: an argmax content token that differs from ``final``. Only active steps count, and
    not the row's last active step (its argmax is the final canvas; nothing reads it).
    """
    _check_shapes(argmax, canvas_out, accepted, active, final)
    special = torch.tensor(list(special), dtype=argmax.dtype, device=argmax.device)

    def content(tokens):
        return ~torch.isin(tokens, special)

    n_active = active.sum(0)  # [batch]; rows stay active for a prefix of the steps
    steps = torch.arange(argmax.shape[0], device=argmax.device)[:, None]
    read_later = (steps + 1 < n_active[None, :])[..., None]  # [steps, batch, 1]
    canvas = accepted.bool() & content(canvas_out) & (canvas_out != final[None]) & read_later
    arg = content(argmax) & (argmax != final[None]) & read_later
    return canvas, arg


def find_transient(
    argmax: torch.Tensor,
    canvas_out: torch.Tensor,
    accepted: torch.Tensor,
    active: torch.Tensor,
    final: torch.Tensor,
    special: Sequence[int] = (),
    *,
    block: int = 0,
) -> list[TransientToken]:
    """The transient tokens of one block (see the module docstring), ordered by row, pos, first step."""
    canvas, arg = transient_masks(argmax, canvas_out, accepted, active, final, special)
    found: list[TransientToken] = []
    n_steps, batch, n_pos = argmax.shape
    for row in range(batch):
        for pos in range(n_pos):
            open_runs: dict[int, list] = {}  # token -> [first, last, in_canvas]
            for step in range(n_steps):
                present = {}
                if arg[step, row, pos]:
                    present[int(argmax[step, row, pos])] = False
                if canvas[step, row, pos]:
                    present[int(canvas_out[step, row, pos])] = True
                for token in list(open_runs):
                    if token not in present:
                        found.append(_close(open_runs.pop(token), row, block, pos, token, final))
                for token, in_canvas in present.items():
                    run = open_runs.setdefault(token, [step, step, False])
                    run[1], run[2] = step, run[2] or in_canvas
            for token, run in open_runs.items():
                found.append(_close(run, row, block, pos, token, final))
    return sorted(found, key=lambda t: (t.row, t.block, t.pos, t.first, t.token))


def _close(run, row, block, pos, token, final) -> TransientToken:
    first, last, in_canvas = run
    return TransientToken(
        row, block, pos, token, first, last, "canvas" if in_canvas else "argmax", int(final[row, pos])
    )


def trajectory_transient(trajectory: Trajectory, special: Sequence[int] = ()) -> list[TransientToken]:
    """:func:`find_transient` over every block of ``trajectory`` (its final canvases as ``final``)."""
    found = []
    for record in trajectory.blocks:
        found += find_transient(
            *(trajectory.stack(name, record.block).cpu() for name in ("argmax", "canvas_out", "accepted", "active")),
            record.final_canvas.cpu(),
            special,
            block=record.block,
        )
    return found


def content_at_step(
    argmax: torch.Tensor,
    canvas_out: torch.Tensor,
    accepted: torch.Tensor,
    active: torch.Tensor,
    step: int,
    special: Sequence[int] = (),
    *,
    block: int = 0,
) -> list[TransientToken]:
    """Every content token of ``step`` (its accepted canvas token, kind ``"canvas"``, and its argmax
    where different, kind ``"argmax"``) in rows still denoising at ``step + 1``: the whole-canvas
    reference ablation (how much the next step reads the canvas at all). Role ``"all"``."""
    tokens = []
    for row in range(argmax.shape[1]):
        if step + 1 >= int(active[:, row].sum()):
            continue
        for pos in range(argmax.shape[2]):
            seen = set()
            if accepted[step, row, pos] and int(canvas_out[step, row, pos]) not in special:
                seen.add(int(canvas_out[step, row, pos]))
                tokens.append(
                    TransientToken(row, block, pos, int(canvas_out[step, row, pos]), step, step, "canvas", -1, "all")
                )
            token = int(argmax[step, row, pos])
            if token not in special and token not in seen:
                tokens.append(TransientToken(row, block, pos, token, step, step, "argmax", -1, "all"))
    return tokens


def transient_rate_per_step(mask: torch.Tensor, active: torch.Tensor) -> list[float | None]:
    """Mean number of transient tokens per active row at each step: ``mask [steps, batch, pos]``,
    ``active [steps, batch]`` -> one value per step (``None`` where no row is active)."""
    counts = (mask & active[..., None].bool()).sum((1, 2)).float()
    rows = active.bool().sum(1)
    return [float(c / r) if r else None for c, r in zip(counts.tolist(), rows.tolist(), strict=True)]


# ------------------------------------------------------------------------------- annotation
def token_role(token: int, prompt: Sequence[int], answer: Sequence[int] | None, output: Sequence[int]) -> str:
    """What a transient token is, from token ids only (works without a tokenizer).

    ``"answer"``: it occurs in the reference answer (for hop: the chain's value); ``"prompt"``: it
    occurs in the prompt (hop: a distractor value or a variable letter); ``"output"``: it occurs
    elsewhere in the final output (a token written at the wrong place); ``"other"`` otherwise.
    """
    if answer is not None and token in answer:
        return "answer"
    if token in prompt:
        return "prompt"
    if token in output:
        return "output"
    return "other"


def char_class(piece: str | None) -> str:
    """``digit`` / ``letter`` / ``symbol`` for a token's text (``""`` when unknown)."""
    if not piece:
        return ""
    if piece.isdigit():
        return "digit"
    return "letter" if piece.isalpha() else "symbol"


def annotate(
    tokens: list[TransientToken],
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]] | None = None,
    tokenizer=None,
) -> list[TransientToken]:
    """``tokens`` with ``role`` set by :func:`token_role` (``"prompt:letter"`` etc. with a tokenizer);
    ``prompts``/``outputs``/``answers`` are token-id lists per row."""
    out = []
    for t in tokens:
        role = token_role(t.token, prompts[t.row], None if answers is None else answers[t.row], outputs[t.row])
        if tokenizer is not None:
            kind = char_class(tokenizer.convert_ids_to_tokens(t.token))
            role = f"{role}:{kind}" if kind else role
        out.append(replace(t, role=role))
    return out


# ------------------------------------------------------------------------------- ablation
@dataclass(frozen=True)
class Ablation:
    """Hide ``token`` at ``pos`` of ``row`` in ``block`` from ``steps`` (the steps that read it).

    ``embed``: replace its canvas embedding by ``replacement``'s where the canvas holds it;
    ``self_conditioning``: remove its probability from the self-conditioning distribution.
    """

    row: int
    block: int
    pos: int
    token: int
    steps: tuple[int, ...]
    replacement: int
    embed: bool = True
    self_conditioning: bool = True


def ablation_for(t: TransientToken, n_active: int, replacement: int) -> Ablation:
    """The ablation of transient token ``t``: canvas kind -> embedding and self-conditioning, argmax
    kind -> self-conditioning only (its canvas position holds renoising noise)."""
    return Ablation(t.row, t.block, t.pos, t.token, t.reading_steps(n_active), replacement, embed=t.kind == "canvas")


def noise_replacement(token: int, vocab_size: int, rng: random.Random, avoid: Sequence[int] = ()) -> int:
    """A uniform random token id (what renoising would put there), not ``token`` nor ``avoid``."""
    if vocab_size <= 1 + len(set(avoid) - {token}):
        raise ValueError(f"vocab_size {vocab_size} leaves no replacement token")
    while True:
        choice = rng.randrange(vocab_size)
        if choice != token and choice not in avoid:
            return choice


def control_for(
    t: TransientToken,
    argmax: torch.Tensor,
    canvas_out: torch.Tensor,
    accepted: torch.Tensor,
    transient_here: torch.Tensor,
    special: Sequence[int],
    rng: random.Random,
    fallback: Sequence[int] = (),
) -> TransientToken | None:
    """A matched control: another position of the same row at step ``t.first`` holding a content
    token that is *not* transient, in the same channel (accepted canvas for the canvas kind, argmax
    otherwise); same steps and kind. ``transient_here``: ``[steps, batch, pos]`` any-transient mask
    of the block; tensors as in :func:`find_transient`. Where no content position exists (a canvas
    holding one answer token), one holding a ``fallback`` token (e.g. eos) is used, with role
    ``"control:fallback"``. ``None`` when there is neither.
    """
    s, row = t.first, t.row
    source = canvas_out if t.kind == "canvas" else argmax

    def candidates(allowed) -> list[int]:
        return [
            pos
            for pos in range(source.shape[2])
            if pos != t.pos
            and not transient_here[s, row, pos]
            and allowed(int(source[s, row, pos]))
            and (t.kind != "canvas" or bool(accepted[s, row, pos]))
        ]

    role, options = "control", candidates(lambda token: token not in special)
    if not options:
        role, options = "control:fallback", candidates(lambda token: token in fallback)
    if not options:
        return None
    pos = rng.choice(options)
    token = int(source[s, row, pos])
    return replace(t, pos=pos, token=token, final=token, role=role)


def ablation_hooks(hm, trajectory: Trajectory, ablations: Sequence[Ablation]) -> list[tuple[str, object]]:
    """Forward hooks that apply ``ablations`` in a replay of ``trajectory`` (``hm.run_with_hooks(...,
    fwd_hooks=hooks, **studies.rerun_kwargs(batch))``; several ablations may share a row).

    Self-conditioning is recomputed from the replay's own previous-step logits (captured at
    ``decoder.hook_logits`` and tempered by the run's logits processor), so it stays exact when an
    earlier ablation has changed the run. Needs the model's own (``continuous``) signal.
    """
    if trajectory.bottleneck not in ("continuous", "none"):
        raise ValueError(
            f"ablation needs the continuous self-conditioning signal; this run used bottleneck "
            f"'{trajectory.bottleneck}' (rerun with bottleneck='continuous')"
        )
    feeds_sc = trajectory.bottleneck == "continuous"
    embed = hm.model.model.decoder.embed_tokens
    weight, scale = embed.weight, embed.embed_scale
    by_step: dict[tuple[int, int], list[Ablation]] = {}
    for a in ablations:
        for step in a.steps:
            if step < 1:
                raise ValueError(f"ablation {a} reads at step {step}; reading steps start at 1")
            by_step.setdefault((a.block, step), []).append(a)
    # the previous step's logits, kept only at the (row, position) pairs whose signal is rebuilt: a
    # whole batch's float32 logits per step would be 256 MiB a row at the 26B model's size
    needed_logits: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for (block, step), todo in by_step.items():
        for a in todo:
            if a.self_conditioning:
                needed_logits.setdefault((block, step - 1), set()).add((a.row, a.pos))
    captured: dict[tuple[int, int], dict[tuple[int, int], torch.Tensor]] = {}

    def capture(logits, hook):
        where = needed_logits.get((hook.block, hook.step)) if hook.step is not None else None
        if where:
            captured[(hook.block, hook.step)] = {(row, pos): logits[row, pos].detach().clone() for row, pos in where}

    def embed_hook(x, hook):
        todo = [a for a in by_step.get((hook.block, hook.step), []) if a.embed] if hook.step is not None else []
        if not todo:
            return None
        x = x.clone()
        for a in todo:
            if torch.equal(x[a.row, a.pos], (weight[a.token] * scale.to(weight.dtype)).to(x.dtype)):
                x[a.row, a.pos] = weight[a.replacement] * scale.to(weight.dtype)
        return x

    def sc_hook(x, hook):
        todo = [a for a in by_step.get((hook.block, hook.step), []) if a.self_conditioning]
        if hook.step is None or not todo or not feeds_sc:
            return None
        record = trajectory.block(hook.block)
        previous = record.steps[hook.step - 1]
        processor = record.runtime.logits_processor
        cur = torch.tensor(previous.hf_step, dtype=torch.int32)
        kept = captured[(hook.block, hook.step - 1)]
        input_ids = record.runtime.input_ids

        def processed(row: int, pos: int) -> torch.Tensor:  # the sampler's processing of one kept row
            return processor(input_ids[row : row + 1], kept[(row, pos)].view(1, 1, -1), cur_step=cur)[0, 0]

        x = x.clone()
        removed: dict[tuple[int, int], torch.Tensor] = {}
        for a in todo:  # several tokens at one position are removed together
            if (a.row, a.pos) not in removed:
                removed[(a.row, a.pos)] = processed(a.row, a.pos).clone()
            removed[(a.row, a.pos)][a.token] = float("-inf")
        for (row, pos), row_logits in removed.items():
            x[row, pos] = _soft(row_logits, weight, scale)
        return x

    return [
        ("decoder.hook_logits", capture),
        ("decoder.hook_embed", embed_hook),
        ("decoder.sc.hook_soft_embed", sc_hook),
    ]


def _soft(logits_row: torch.Tensor, weight: torch.Tensor, scale) -> torch.Tensor:
    """``softmax(logits) @ E * scale`` (zeros when every logit is -inf), in the decoder's dtypes."""
    logits_row = logits_row.to(weight.dtype)
    if torch.isinf(logits_row).all():
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    return logits_row.softmax(-1, dtype=torch.float32).to(weight.dtype) @ weight * scale.to(weight.dtype)


# ------------------------------------------------------------------------------- outcomes
def outcome_flags(
    clean: Sequence[Sequence[int]], patched: Sequence[Sequence[int]], correct: Sequence[bool] | None, patched_correct
) -> dict[str, list[bool | None]]:
    """Per row: ``changed`` (output tokens differ from the clean run's) and ``broke`` (a correct clean
    answer became wrong; ``None`` where correctness is unknown)."""
    changed = [list(a) != list(b) for a, b in zip(clean, patched, strict=True)]
    if correct is None or patched_correct is None:
        return {"changed": changed, "broke": [None] * len(changed)}
    broke = [bool(c) and not bool(p) for c, p in zip(correct, patched_correct, strict=True)]
    return {"changed": changed, "broke": broke}


def count_by(tokens: Sequence[TransientToken], field: str) -> dict[str, int]:
    """How many transient tokens per value of ``field`` (``kind``, ``role``, ``first`` ...)."""
    return dict(Counter(str(getattr(t, field)) for t in tokens))


def single_rates(single: list[dict]) -> dict[str, Any]:
    """Per kind and per role (``by_kind``, ``control_by_role`` ...): how often one token's ablation
    changed the output / broke a correct answer. ``single``: records with keys ``control`` (bool),
    ``kind``, ``role``, ``changed`` (bool) and ``broke`` (bool, ``None`` for rows not correct)."""
    out: dict[str, Any] = {}
    for group in ("kind", "role"):
        for control in (False, True):
            mine = [s for s in single if s["control"] == control]
            out[f"{'control_' if control else ''}by_{group}"] = {
                value: {
                    "changed": stats.proportion_of([s["changed"] for s in mine if s[group] == value]),
                    "broke_of_correct": stats.proportion_of(
                        [s["broke"] for s in mine if s[group] == value and s["broke"] is not None]
                    ),
                }
                for value in sorted({s[group] for s in mine})
            }
    return out


class StepRates:
    """Transient tokens per active row at each step, pooled over batches of different lengths:
    ``add((canvas, argmax) masks [steps, batch, pos], active [steps, batch])``, then ``rates()``."""

    def __init__(self):
        self.counts: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.rows: list[float] = []

    def add(self, masks, active: torch.Tensor) -> None:
        rows = active.bool().sum(1).tolist()
        self.rows += [0] * (len(rows) - len(self.rows))
        for s, r in enumerate(rows):
            self.rows[s] += r
        for kind, mask in zip(KINDS, masks, strict=True):
            counts = (mask & active.bool()[..., None]).sum((1, 2)).tolist()
            mine = self.counts[kind]
            mine += [0] * (len(counts) - len(mine))
            for s, c in enumerate(counts):
                mine[s] += c

    def rates(self, min_rows: int = 1) -> dict[str, list[float | None]]:
        """Per kind, one value per step; ``None`` where fewer than ``min_rows`` rows were active."""
        return {
            k: [c / r if r >= max(min_rows, 1) else None for c, r in zip(v, self.rows, strict=False)]
            for k, v in self.counts.items()
        }
