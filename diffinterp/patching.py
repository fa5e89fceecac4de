"""Activation patching, path patching and attribution patching across denoising steps.

A *patch* copies one activation (hook name, block, step, canvas positions) from a **source** run
(usually the clean prompt's, read from its :class:`~diffinterp.cache.DenoisingCache`) into a
**target** run (usually the corrupted prompt's trajectory), and a *metric* scores the patched run.

Three modes say how far a patch's effect is followed (every function names the mode it uses):

``"free"``  free-running: the patched block is *generated again* from the patched step on, sampling
            included; the sampler's random draws are those of ``replay`` (the clean run), so the patch
            is the only difference. The metric reads each row's last step (its final logits and argmax
            canvas) of the patched block. This is the real effect of the patch on the output.
``"chain"`` teacher-forced chain: the later steps see the target's recorded canvases (no resampling),
            but the self-conditioning signal is recomputed from the patched logits and passed on, step
            after step; the metric reads each row's last step. The effect through self-conditioning
            only; this is what :func:`attribution_patching` linearises.
``"step"``  one step: only the patched step is re-run; the metric reads that step's logits.

All three are *batched*: many patched runs share each forward pass (the target's inputs, KV cache
and masks are repeated along the batch dimension, one group of rows per patched run).
:func:`run_patches_loop` is the brute-force reference: one ``hm.run_with_hooks(replay=clean)``
generation (free) or ``hm.run_step`` (step) per patched run.

Shapes: ``batch`` = the trajectories' batch (prompts), ``canvas`` = canvas length, ``V`` = vocab.
Metric values are ``[..., batch]``: one value per patched run and prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffinterp.cache import DenoisingCache
from diffinterp.sampler import (
    Bottleneck,
    apply_bottleneck,
    generation_kwargs,
    self_conditioning_inputs,
    snapshot_cache,
)
from diffinterp.trajectory import Trajectory

MODES = ("free", "chain", "step")
RESID_POST = "decoder.blocks.{layer}.hook_resid_post"

# ---------------------------------------------------------------------------------------------
# Patches


@dataclass(frozen=True, eq=False)
class Patch:
    """Replace hook ``name`` at (``block``, ``step``) by the source run's activation.

    ``positions``: None (all positions), a list of canvas positions, or a bool tensor
    ``[batch, pos]`` choosing positions per prompt (pattern hooks: query positions).
    """

    name: str
    step: int
    block: int = 0
    positions: Sequence[int] | torch.Tensor | None = None

    def __post_init__(self):
        if not self.name.startswith("decoder."):
            raise ValueError(
                f"patches replace decoder activations (one per denoising step); '{self.name}' is not a decoder hook"
            )
        for what, value in (("step", self.step), ("block", self.block)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Patch {what} must be an integer >= 0, got {value!r}")

    def mask(self, batch: int, n_pos: int, device=None) -> torch.Tensor:
        """The positions as a bool mask ``[batch, n_pos]``."""
        return position_mask(self.positions, batch, n_pos, device, what=f"patch of '{self.name}'")


def position_mask(positions, batch: int, n_pos: int, device=None, what: str = "positions") -> torch.Tensor:
    """``positions`` (None = all, list of ints, or bool ``[batch, n_pos]``) as a bool mask ``[batch, n_pos]``."""
    if positions is None:
        return torch.ones(batch, n_pos, dtype=torch.bool, device=device)
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch, n_pos):
            raise ValueError(
                f"{what}: a position mask must have shape [batch, pos] = [{batch}, {n_pos}], got {list(positions.shape)}"
            )
        return positions.to(device)
    values = [int(p) for p in (positions.tolist() if isinstance(positions, torch.Tensor) else positions)]
    bad = [p for p in values if not 0 <= p < n_pos]
    if bad:
        raise IndexError(f"{what}: position {bad[0]} out of range (valid 0..{n_pos - 1})")
    mask = torch.zeros(batch, n_pos, dtype=torch.bool, device=device)
    mask[:, values] = True
    return mask


def _as_runs(runs) -> list[list[Patch]]:
    result = []
    for run in runs:
        patches = [run] if isinstance(run, Patch) else list(run)
        for patch in patches:
            if not isinstance(patch, Patch):
                raise TypeError(f"a patched run is a Patch or a list of Patches, got {type(patch).__name__}")
        result.append(patches)
    return result


# ---------------------------------------------------------------------------------------------
# Metrics: fn(logits [..., batch, canvas, V] float32, canvas [..., batch, canvas]) -> [..., batch]


def _gather_mask(positions, reference: torch.Tensor) -> torch.Tensor:
    batch, canvas = reference.shape
    return position_mask(positions, batch, canvas, reference.device, what="metric positions")


@dataclass(eq=False)
class LogitDiff:
    """Mean over ``positions`` of ``logit[clean token] - logit[corrupt token]`` (raw, soft-capped logits).

    ``clean_tokens`` / ``corrupt_tokens``: ``[batch, canvas]`` (e.g. the two runs' final canvases).
    ``positions`` None = the positions where the two differ (per prompt); rows where none differ
    score 0. Differentiable.
    """

    clean_tokens: torch.Tensor
    corrupt_tokens: torch.Tensor
    positions: Any = None
    name: str = "logit difference"
    differentiable: bool = True

    def __call__(self, logits: torch.Tensor, canvas: torch.Tensor | None = None) -> torch.Tensor:
        clean = self.clean_tokens.to(logits.device)
        corrupt = self.corrupt_tokens.to(logits.device)
        mask = (clean != corrupt) if self.positions is None else _gather_mask(self.positions, clean)
        shape = logits.shape[:-1]
        good = logits.gather(-1, clean.expand(shape).unsqueeze(-1)).squeeze(-1)
        bad = logits.gather(-1, corrupt.expand(shape).unsqueeze(-1)).squeeze(-1)
        weight = mask.to(logits.dtype)
        return ((good - bad) * weight).sum(-1) / weight.sum(-1).clamp(min=1)


@dataclass(eq=False)
class AnswerProb:
    """Mean over ``positions`` of the probability (softmax of the raw logits) of ``tokens`` ``[batch, canvas]``.

    ``positions`` None = every position. Differentiable.
    """

    tokens: torch.Tensor
    positions: Any = None
    name: str = "answer probability"
    differentiable: bool = True

    def __call__(self, logits: torch.Tensor, canvas: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.tokens.to(logits.device)
        mask = _gather_mask(self.positions, tokens)
        probs = logits.softmax(-1).gather(-1, tokens.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        weight = mask.to(probs.dtype)
        return (probs * weight).sum(-1) / weight.sum(-1).clamp(min=1)


@dataclass(eq=False)
class ExactMatch:
    """1.0 where the output canvas equals ``tokens`` ``[batch, canvas]`` at ``positions`` (None = all), else 0.0.

    With ``eos_id`` / ``pad_id`` both canvases are compared as the sampler returns them: every token
    after the first EOS counts as padding.
    """

    tokens: torch.Tensor
    positions: Any = None
    eos_id: int | None = None
    pad_id: int | None = None
    name: str = "exact match"
    differentiable: bool = False

    def __call__(self, logits: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens.to(canvas.device)
        mask = _gather_mask(self.positions, tokens)
        got, want = canvas, tokens.expand(canvas.shape)
        if self.eos_id is not None and self.pad_id is not None:
            got, want = pad_after_eos(got, self.eos_id, self.pad_id), pad_after_eos(want, self.eos_id, self.pad_id)
        same = (got == want) | ~mask
        return same.all(-1).to(torch.float32)


def pad_after_eos(canvas: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Tokens after each row's first EOS replaced by ``pad_id`` (as ``generate`` finalises a canvas)."""
    is_eos = canvas == eos_id
    cumsum = is_eos.long().cumsum(-1)
    after = (cumsum > 0) & ~((cumsum == 1) & is_eos)
    return canvas.masked_fill(after, pad_id)


def final_outputs(hm, trajectory: Trajectory, block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's last denoising step of ``block``: (raw logits ``[batch, canvas, V]``, argmax canvas ``[batch, canvas]``).

    Rows stop at different steps (adaptive stopping); this takes the logits of the step at which
    each row was last active, re-running steps whose logits were not recorded.
    """
    record = trajectory.block(block)
    logits = None
    for step in record.steps:
        step_logits = step.logits if step.logits is not None else hm.run_step(trajectory, block, step.step)
        step_logits = step_logits.float()
        logits = step_logits.clone() if logits is None else torch.where(step.active[:, None, None], step_logits, logits)
    return logits, record.steps[-1].argmax


def step_outputs(hm, trajectory: Trajectory, block: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's (raw logits, argmax canvas), recorded or re-run."""
    record = trajectory.step(block, step)
    logits = record.logits if record.logits is not None else hm.run_step(trajectory, block, step)
    return logits.float(), record.argmax


# ---------------------------------------------------------------------------------------------
# Batched machinery


def _generation_config(model, trajectory: Trajectory):
    """The generation config a trajectory was sampled with (from its recorded settings)."""
    return model._prepare_generation_config(None, **generation_kwargs(trajectory))[0]


def repeat_kv_cache(cache, n: int):
    """A copy of a KV cache whose every layer's keys and values are repeated ``n`` times along the batch."""
    if n == 1:
        return snapshot_cache(cache)
    repeated = copy.copy(cache)
    repeated.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        for attr in ("keys", "values"):
            value = getattr(layer, attr, None)
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                setattr(new, attr, value.repeat(n, *([1] * (value.dim() - 1))))
        repeated.layers.append(new)
    return repeated


def _repeat_rows(tensor, n: int, batch: int):
    if not isinstance(tensor, torch.Tensor) or n == 1 or tensor.dim() == 0 or tensor.shape[0] != batch:
        return tensor
    return tensor.repeat(n, *([1] * (tensor.dim() - 1)))


def _check_gumbel(device: torch.device, _checked: set = set()) -> None:  # noqa: B006 - a per-process memo
    """Check once per device that our replay of ``torch.multinomial`` draws what it draws."""
    if device.type in _checked:
        return
    get = (lambda: torch.get_rng_state()) if device.type == "cpu" else (lambda: torch.cuda.get_rng_state(device))
    put = torch.set_rng_state if device.type == "cpu" else (lambda s: torch.cuda.set_rng_state(s, device))
    outer = get()
    probs = torch.rand(12, 37, device=device).softmax(-1)
    state = get()
    reference = torch.multinomial(probs, 1).squeeze(-1)
    mark = torch.randint(0, 1000, (4,), device=device)
    put(state)
    ours = _gumbel_argmax(probs, 1)
    again = torch.randint(0, 1000, (4,), device=device)
    put(outer)
    if not (torch.equal(reference, ours) and torch.equal(mark, again)):
        raise RuntimeError(
            f"batched free-running patching cannot replay torch.multinomial's draws on {device.type}; "
            "use run_patches_loop (one generation per patched run) instead"
        )
    _checked.add(device.type)


def _gumbel_argmax(probs: torch.Tensor, copies: int) -> torch.Tensor:
    """``torch.multinomial(p, 1)`` of a single run, applied with the *same* draws to each of ``copies``.

    ``probs`` is ``[copies * rows, V]``; multinomial with one sample draws ``q ~ Exp(1)`` of shape
    ``[rows, V]`` and returns ``argmax(p / q)``: drawing ``q`` once for ``rows`` consumes the
    generator exactly as the single run does, and every copy reuses it.
    """
    rows, vocab = probs.shape[0] // copies, probs.shape[-1]
    q = torch.empty((rows, vocab), dtype=probs.dtype, device=probs.device).exponential_()
    return (probs.view(copies, rows, vocab) / q).argmax(-1).view(-1)


class _Patcher:
    """Forward hooks that write the source activations into the rows of each patched run."""

    def __init__(self, hm, source: DenoisingCache, runs: list[list[Patch]], batch: int):
        self.hm, self.source, self.runs, self.batch = hm, source, runs, batch
        self.table: dict[tuple[str, int, int], list[tuple[int, Patch]]] = {}
        for index, run in enumerate(runs):
            for patch in run:
                hm.resolve_names(patch.name)
                if "*" in patch.name or "?" in patch.name:
                    raise ValueError(f"a Patch names one hook, not a pattern: '{patch.name}'")
                source.get(patch.name, patch.step, patch.block)  # fails early, naming the recorded steps
                self.table.setdefault((patch.name, patch.step, patch.block), []).append((index, patch))
        if source.positions is not None:
            raise ValueError("the source cache was recorded at selected positions only; record every position to patch")

    @property
    def names(self) -> list[str]:
        return sorted({name for name, _, _ in self.table})

    def fwd_hooks(self):
        return [(name, self._hook) for name in self.names]

    def _hook(self, tensor: torch.Tensor, hook) -> torch.Tensor | None:
        """Rows of the forward are ``self.rows`` (indices into copies × prompts, copy-major)."""
        entries = self.table.get((hook.name, hook.step, hook.block))
        if not entries:
            return None
        rows = self.rows.to(tensor.device)
        copies = int(rows.max()) // self.batch + 1 if rows.numel() else 0
        entries = [(index, patch) for index, patch in entries if index < copies]
        if not entries:
            return None
        source = self.source.get(hook.name, hook.step, hook.block).to(device=tensor.device, dtype=tensor.dtype)
        pos_dim = self.hm.hook_dict[hook.name].pos_dim
        n_pos = tensor.shape[pos_dim]
        if source.shape[0] != self.batch or tuple(source.shape[1:]) != tuple(tensor.shape[1:]):
            raise ValueError(
                f"source activation of '{hook.name}' at step {hook.step} has shape {list(source.shape)}, but the "
                f"patched run's is {[self.batch, *tensor.shape[1:]]}: source and target must share batch and prompt length"
            )
        mask = torch.zeros(copies, self.batch, n_pos, dtype=torch.bool, device=tensor.device)
        for index, patch in entries:
            mask[index] |= patch.mask(self.batch, n_pos, tensor.device)
        mask = mask.view(-1, n_pos)[rows]  # [rows, pos]
        shape = [rows.numel()] + [1] * (tensor.dim() - 1)
        shape[pos_dim] = n_pos
        return torch.where(mask.view(shape), source[rows % self.batch], tensor)


@dataclass
class _Start:
    """The target run's state entering ``step`` (single-run batch)."""

    canvas: torch.Tensor
    signal: torch.Tensor | None
    argmax: torch.Tensor
    finished: torch.Tensor
    history: torch.Tensor | None


def _start_state(hm, target: Trajectory, block: int, step: int, stability: int) -> _Start:
    record = target.block(block)
    if not 0 <= step < record.n_steps:
        raise IndexError(
            f"step {step} out of range: the target run's block {block} ran {record.n_steps} steps "
            f"(valid 0..{record.n_steps - 1})"
        )
    here = record.steps[step]
    signal = self_conditioning_inputs(hm, target, block, step)[step]
    argmax = record.steps[step - 1].argmax if step > 0 else here.canvas_in
    history = None
    if stability > 0 and step > 0:
        rows = [
            record.steps[i].argmax if i >= 0 else torch.full_like(here.canvas_in, -1)
            for i in range(step - stability, step)
        ]
        history = torch.stack(rows)
    return _Start(here.canvas_in, signal, argmax, ~here.active, history)


def _check_coupled(target: Trajectory, replay: Trajectory, block: int) -> None:
    """A free-running patch is only meaningful if the target already used the replayed draws."""
    for mine, theirs in zip(target.block(block).steps, replay.block(block).steps, strict=False):
        if mine.rng_state is None or theirs.rng_state is None:
            return
        if not torch.equal(mine.rng_state.cpu, theirs.rng_state.cpu):
            raise ValueError(
                f"the target trajectory did not replay the clean run's random draws (step {mine.step} of block "
                f"{block} differs): generate it with replay=clean_trajectory (see coupled_runs)"
            )


def _index_kv_cache(cache, rows: torch.Tensor):
    """A copy of a KV cache holding, for each of ``rows``, that prompt's keys and values."""
    indexed = copy.copy(cache)
    indexed.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        for attr in ("keys", "values"):
            value = getattr(layer, attr, None)
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                setattr(new, attr, value.index_select(0, rows.to(value.device)))
        indexed.layers.append(new)
    return indexed


def _index_rows(tensor, rows: torch.Tensor, batch: int):
    """``tensor[rows]`` for per-prompt tensors (leading dim ``batch``); others unchanged."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0 or tensor.shape[0] != batch:
        return tensor
    return tensor.index_select(0, rows.to(tensor.device))


def _run_group(
    hm,
    target: Trajectory,
    source: DenoisingCache,
    runs: list[list[Patch]],
    starts: list[int],
    metric: Callable,
    *,
    block: int,
    mode: str,
    replay: Trajectory | None,
) -> torch.Tensor:
    """Metric ``[len(runs), batch]`` of ``runs`` (each a list of patches), evaluated together.

    ``starts`` (non-decreasing) gives each run's first patched step. The batch *grows*: before a
    run's start its rows would equal the target's recorded run, so they are not computed; at its
    start they join the batch from the target's recorded state. Every step is one forward pass
    over the rows of all runs started so far; in ``free`` mode, rows that have stopped denoising
    (adaptive stopping) leave the forward pass (their outputs are frozen, as in ``generate``).
    """
    model = hm.model
    record = target.block(block)
    runtime = record.runtime
    if runtime is None:
        raise ValueError("the target trajectory has no runtime state (loaded from disk): call hm.restore_runtime first")
    config = _generation_config(model, target)
    bottleneck = Bottleneck.parse(target.bottleneck)
    batch = target.batch_size
    criteria = model._prepare_diffusion_stopping_criteria(config) if mode == "free" else None
    stability = getattr(criteria, "stability_threshold", 0) if criteria is not None else 0
    if criteria is not None:
        criteria.reset()
    sampler = model._prepare_sampler(config) if mode == "free" else None
    embeddings_dtype = model.model.decoder.embed_tokens.weight.dtype
    vocab = model.config.text_config.vocab_size
    last_step = {"free": config.max_denoising_steps, "chain": record.n_steps, "step": starts[0] + 1}[mode]
    done_logits, done_argmax = final_outputs(hm, target, block)  # rows finished before their start keep these
    patcher = _Patcher(hm, source, runs, batch)
    context = hm.context
    device = runtime.input_ids.device
    if mode == "free":
        _check_coupled(target, replay, block)
        _check_gumbel(device)

    copies = 0
    canvas = signal = argmax = finished = final_logits = final_argmax = history = None

    def rep(tensor, n):
        return _repeat_rows(tensor, n, batch)

    def cat(old, new, dim=0):
        return new.clone() if old is None else torch.cat([old, new], dim=dim)

    try:
        with hm.hooks(patcher.fwd_hooks()), torch.no_grad():
            for step in range(starts[0], last_step):
                joining = sum(1 for start in starts if start == step)
                if joining:
                    state = _start_state(hm, target, block, step, stability)
                    canvas, argmax = cat(canvas, rep(state.canvas, joining)), cat(argmax, rep(state.argmax, joining))
                    finished = cat(finished, rep(state.finished, joining))
                    new_signal = state.signal
                    if new_signal is None and signal is not None:
                        new_signal = torch.zeros_like(signal[:batch])
                    if new_signal is not None:
                        if signal is None and copies:
                            signal = torch.zeros(
                                (copies * batch, *new_signal.shape[1:]), dtype=new_signal.dtype, device=device
                            )
                        signal = cat(signal, rep(new_signal, joining))
                    final_logits = cat(final_logits, rep(done_logits, joining))
                    final_argmax = cat(final_argmax, rep(done_argmax, joining))
                    if stability > 0:
                        joined = (
                            state.history.repeat(1, joining, 1)
                            if state.history is not None
                            else torch.full(
                                (stability, joining * batch, canvas.shape[1]), -1, dtype=canvas.dtype, device=device
                            )
                        )
                        history = cat(history, joined, dim=1)
                    copies += joining
                total = copies * batch
                hf_step = config.max_denoising_steps - step
                if mode == "free" and block < len(replay.blocks) and step < replay.blocks[block].n_steps:
                    replay.blocks[block].steps[step].rng_state.restore()
                if mode == "chain":
                    recorded = record.steps[step]
                    canvas, finished = rep(recorded.canvas_in, copies), rep(~recorded.active, copies)
                rows = (~finished).nonzero().flatten() if mode == "free" else torch.arange(total, device=device)
                prompts = rows % batch
                patcher.rows = rows
                if rows.numel():
                    context.stack, context.block, context.step = "decoder", block, step
                    kwargs = {
                        "decoder_input_ids": canvas[rows].clone(),
                        "self_conditioning_logits": signal[rows]
                        if bottleneck.feeds_signal and signal is not None
                        else None,
                        "decoder_attention_mask": {
                            k: _index_rows(v, prompts, batch) for k, v in runtime.mask_mapping.items()
                        },
                        "past_key_values": _index_kv_cache(runtime.past_key_values, prompts),
                        "decoder_position_ids": _index_rows(runtime.decoder_position_ids, prompts, batch),
                        **{k: _index_rows(v, prompts, batch) for k, v in runtime.model_kwargs.items()},
                    }
                    raw = model(**kwargs).logits
                    context.stack = context.block = context.step = None
                    cur = torch.tensor(hf_step, dtype=torch.int32, device=raw.device)
                    processed = runtime.logits_processor(runtime.input_ids[prompts], raw, cur_step=cur)
                if mode == "step":
                    final_logits, final_argmax = raw.float(), processed.argmax(-1)
                    break
                if mode == "chain":
                    finished_before = finished
                    active = ~finished_before
                    final_logits = torch.where(active[:, None, None], raw.float(), final_logits)
                    if signal is not None and finished_before.any():
                        processed = torch.where(finished_before[:, None, None], signal, processed)
                    recorded = record.steps[step]
                    signal = apply_bottleneck(
                        bottleneck,
                        processed.to(embeddings_dtype),
                        signal,
                        rep(recorded.sampled, copies),
                        rep(recorded.argmax, copies),
                        finished_before,
                    )
                    final_argmax = torch.where(active[:, None], processed.argmax(-1), final_argmax)
                    continue
                # free-running: transformers' _denoising_step on the rows still denoising, with the random
                # draws of one run (shape [batch * canvas, V], then [batch, canvas]) shared by all copies
                n_canvas = canvas.shape[1]
                q = torch.empty((batch * n_canvas, vocab), dtype=torch.float32, device=device).exponential_()
                noise = torch.randint(0, vocab, (batch, n_canvas), device=device)
                if rows.numel():
                    probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
                    sampled = (probs / q.view(batch, n_canvas, vocab)[prompts]).argmax(-1)
                    new_argmax = torch.argmax(processed, dim=-1)
                    accepted = sampler.accept_canvas(canvas[rows], sampled, processed, cur).clone()
                    new_canvas = torch.where(~sampler.accepted_token_mask, noise[prompts], accepted)
                    done = torch.zeros_like(rows, dtype=torch.bool)
                    if criteria is not None:
                        if history is not None:
                            criteria.argmax_canvas_history = history[:, rows].clone()
                        done = criteria(new_argmax, processed)
                        if history is not None:
                            history[:, rows] = criteria.argmax_canvas_history
                    previous = signal[rows] if signal is not None else None
                    new_signal = apply_bottleneck(
                        bottleneck,
                        processed.to(embeddings_dtype),
                        previous,
                        sampled,
                        new_argmax,
                        torch.zeros_like(done),
                    )
                    if signal is None:
                        signal = torch.zeros((total, *new_signal.shape[1:]), dtype=new_signal.dtype, device=device)
                    signal[rows] = new_signal
                    canvas[rows], argmax[rows] = new_canvas, new_argmax
                    final_logits[rows] = raw.float()
                    finished[rows] = done
                final_argmax = argmax
                if bool(finished.all()) and copies == len(runs):
                    break
    finally:
        context.stack = context.block = context.step = None
    shape = (copies, batch)
    values = metric(final_logits.view(*shape, *final_logits.shape[1:]), final_argmax.view(*shape, -1))
    return values.detach().float()


def run_patches(
    hm,
    target: Trajectory,
    source: DenoisingCache,
    runs: Sequence[Patch | Sequence[Patch]],
    metric: Callable,
    *,
    mode: str = "free",
    replay: Trajectory | None = None,
    block: int | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Batched: the metric of each patched run, ``[len(runs), batch]``.

    ``runs``: each a :class:`Patch` or a list of patches applied together. Runs are grouped by
    their first patched step and evaluated ``batch_size`` runs per forward pass, from that step on
    (earlier steps equal the target's). ``mode`` (free | chain | step) as in the module docstring;
    ``free`` needs ``replay`` (the clean trajectory whose random draws the target used). All
    patches must be in one block (the block the metric reads; default: the patches' block).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; valid modes: {', '.join(MODES)}")
    if mode == "free" and replay is None:
        raise ValueError("mode='free' needs replay=<the clean trajectory> (its random draws are reused)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    runs = _as_runs(runs)
    blocks = {p.block for run in runs for p in run}
    if block is None:
        block = blocks.pop() if len(blocks) == 1 else 0
        blocks.add(block)
    if blocks - {block}:
        raise ValueError(
            f"batched patching reads the patched block; these runs patch blocks {sorted(blocks)} but the metric reads "
            f"block {block}: use run_patches_loop for effects across blocks"
        )
    n_steps = target.block(block).n_steps
    values = torch.empty(len(runs), target.batch_size)
    starts = []
    for run in runs:
        start = min((p.step for p in run), default=n_steps - 1 if mode == "step" else 0)
        if mode == "step" and any(p.step != start for p in run):
            raise ValueError("mode='step' re-runs one step: all patches of a run must be at the same step")
        if not 0 <= start < n_steps:
            raise IndexError(
                f"patch at step {start} out of range: block {block} of the target ran steps 0..{n_steps - 1}"
            )
        starts.append(start)
    order = sorted(range(len(runs)), key=lambda i: starts[i])
    # step mode: one forward per step (a group per step); otherwise one growing batch per chunk
    chunks: list[list[int]] = []
    for index in order:
        if chunks and len(chunks[-1]) < batch_size and (mode != "step" or starts[chunks[-1][0]] == starts[index]):
            chunks[-1].append(index)
        else:
            chunks.append([index])
    for part in chunks:
        values[part] = _run_group(
            hm, target, source, [runs[i] for i in part], [starts[i] for i in part], metric,
            block=block, mode=mode, replay=replay,
        )  # fmt: skip
    return values


def run_patches_loop(
    hm,
    target: Trajectory,
    source: DenoisingCache,
    runs: Sequence[Patch | Sequence[Patch]],
    metric: Callable,
    *,
    mode: str = "free",
    replay: Trajectory | None = None,
    block: int = 0,
) -> torch.Tensor:
    """Brute-force reference of :func:`run_patches`: one run per patched run, ``[len(runs), batch]``.

    ``free``: ``hm.run_with_hooks(target prompts, replay=replay, record_logits=True)`` with the
    target's sampler settings, scored on ``block``'s last steps (so patches may be in earlier
    blocks). ``step``: ``hm.run_step``. ``chain`` has no simpler reference; use ``run_patches``.
    """
    if mode not in ("free", "step"):
        raise ValueError(f"run_patches_loop supports modes 'free' and 'step', got '{mode}'")
    if mode == "free" and replay is None:
        raise ValueError("mode='free' needs replay=<the clean trajectory>")
    runs = _as_runs(runs)
    values = torch.empty(len(runs), target.batch_size)
    for index, run in enumerate(runs):
        fwd = []
        for patch in run:
            activation = source.get(patch.name, patch.step, patch.block)

            def replace(tensor, hook, activation=activation):
                return activation.to(device=tensor.device, dtype=tensor.dtype)

            mask = patch.positions
            if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
                fwd.append((patch.name, _masked(replace, mask, hm.hook_dict[patch.name].pos_dim), patch))
            else:
                fwd.append((patch.name, replace, patch))
        with _nested_hooks(hm, fwd):
            if mode == "free":
                traj = hm.generate(
                    target.prompt_ids,
                    attention_mask=target.attention_mask,
                    replay=replay,
                    record_logits=True,
                    bottleneck=target.bottleneck,
                    **generation_kwargs(target),
                )
                logits, canvas = final_outputs(hm, traj, block)
            else:
                step = run[0].step if run else target.block(block).n_steps - 1
                logits = hm.run_step(target, block, step).float()
                canvas = logits.argmax(-1)
        values[index] = metric(logits.unsqueeze(0), canvas.unsqueeze(0))[0].detach()
    return values


def _masked(fn, mask: torch.Tensor, pos_dim: int):
    def hook(tensor, hook):
        new = fn(tensor, hook)
        shape = [mask.shape[0]] + [1] * (tensor.dim() - 1)
        shape[pos_dim] = mask.shape[1]
        return torch.where(mask.to(tensor.device).view(shape), new, tensor)

    return hook


class _nested_hooks:
    """Enter one ``hm.hooks`` context per patch (each with its own step/block/positions target)."""

    def __init__(self, hm, fwd):
        self.contexts = []
        for name, fn, patch in fwd:
            positions = None
            if patch.positions is not None and not (
                isinstance(patch.positions, torch.Tensor) and patch.positions.dtype == torch.bool
            ):
                positions = [int(p) for p in patch.positions]
            self.contexts.append(hm.hooks([(name, fn)], steps=[patch.step], blocks=[patch.block], positions=positions))

    def __enter__(self):
        for context in self.contexts:
            context.__enter__()

    def __exit__(self, *exc):
        for context in reversed(self.contexts):
            context.__exit__(*exc)
        return False


# ---------------------------------------------------------------------------------------------
# Runs and sweeps


def coupled_runs(
    hm,
    clean_prompts,
    corrupt_prompts,
    names_filter=None,
    *,
    attention_mask=None,
    corrupt_attention_mask=None,
    seed: int = 0,
    **gen_kwargs,
) -> tuple[Trajectory, DenoisingCache, Trajectory, DenoisingCache]:
    """Clean and corrupted runs that make the same random draws: ``(clean, clean_cache, corrupt, corrupt_cache)``.

    Prompts are strings (tokenised together, so both get the same padded length) or id tensors of
    the same shape. The corrupt run replays the clean run's RNG states, so any difference between
    them comes from the prompts. Seeds torch's global RNG with ``seed`` first. Logits are recorded (``record_logits=True``); ``names_filter``
    chooses the cached activations (default: every layer's ``hook_resid_post``).
    """
    if isinstance(clean_prompts, str) or (isinstance(clean_prompts, list) and isinstance(clean_prompts[0], str)):
        clean_list = [clean_prompts] if isinstance(clean_prompts, str) else list(clean_prompts)
        corrupt_list = [corrupt_prompts] if isinstance(corrupt_prompts, str) else list(corrupt_prompts)
        if len(clean_list) != len(corrupt_list):
            raise ValueError(f"{len(clean_list)} clean prompts but {len(corrupt_list)} corrupted ones: pair them")
        ids, mask = hm.to_tokens(clean_list + corrupt_list)
        n = len(clean_list)
        clean_ids, corrupt_ids, attention_mask, corrupt_attention_mask = ids[:n], ids[n:], mask[:n], mask[n:]
    else:
        clean_ids, corrupt_ids = clean_prompts, corrupt_prompts
        if clean_ids.shape != corrupt_ids.shape:
            raise ValueError(
                f"clean and corrupted prompts must have the same shape, got {list(clean_ids.shape)} and "
                f"{list(corrupt_ids.shape)}: pad them to one length"
            )
        corrupt_attention_mask = corrupt_attention_mask if corrupt_attention_mask is not None else attention_mask
    names = names_filter if names_filter is not None else "decoder.blocks.*.hook_resid_post"
    gen_kwargs.setdefault("record_logits", True)
    torch.manual_seed(seed)
    clean, clean_cache = hm.run_with_cache(clean_ids, names, attention_mask=attention_mask, **gen_kwargs)
    corrupt, corrupt_cache = hm.run_with_cache(
        corrupt_ids, names, attention_mask=corrupt_attention_mask, replay=clean, **gen_kwargs
    )
    return clean, clean_cache, corrupt, corrupt_cache


@dataclass
class PatchingResult:
    """Metric values of a patching sweep.

    ``values``: ``[*axes, batch]`` (one value per patched run and prompt); ``axes``: the axis
    names and their labels, in order (e.g. ``{"step": [0..S-1], "layer": [0..L-1]}``); ``clean`` and
    ``corrupt``: the unpatched source and target runs' metric, broadcastable to ``values``.
    """

    values: torch.Tensor
    axes: dict[str, list]
    clean: torch.Tensor
    corrupt: torch.Tensor
    metric: str
    mode: str
    hook: str = ""
    block: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def normalised(self) -> torch.Tensor:
        """``(values - corrupt) / (clean - corrupt)``: 0 = no effect, 1 = fully restored (NaN where clean == corrupt)."""
        gap = self.clean - self.corrupt
        return (self.values - self.corrupt) / torch.where(gap == 0, torch.full_like(gap, float("nan")), gap)

    def mean(self, normalised: bool = False) -> torch.Tensor:
        """Mean over prompts ``[*axes]``; ``normalised``: the gap restored by the mean, ``(mean patched - mean corrupt) / (mean clean - mean corrupt)``."""
        values = self.values.mean(-1)
        if not normalised:
            return values
        clean, corrupt = self.clean.mean(-1), self.corrupt.mean(-1)
        gap = clean - corrupt
        return (values - corrupt) / torch.where(gap == 0, torch.full_like(gap, float("nan")), gap)


def _layers(hm, layers) -> list[int]:
    n = hm.text_config.num_hidden_layers
    layers = list(range(n)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise IndexError(f"layer {bad[0]} out of range: the decoder has layers 0..{n - 1}")
    return layers


def _steps(target: Trajectory, block: int, steps, source: Trajectory | None = None) -> list[int]:
    """The requested steps (default: every step both runs ran), checked against both runs."""
    n = target.block(block).n_steps
    what = f"the target's block {block} ran steps 0..{n - 1}"
    if source is not None and source.block(block).n_steps < n:
        n = source.block(block).n_steps
        what = f"the source (clean) run, which provides the patched activations, ran steps 0..{n - 1} of block {block}"
    steps = list(range(n)) if steps is None else list(steps)
    bad = [s for s in steps if not 0 <= s < n]
    if bad:
        raise IndexError(f"step {bad[0]} out of range: {what}")
    return steps


def _baselines(hm, clean, corrupt, metric, block, mode, steps):
    if mode == "step":
        cl = torch.stack([metric(*[x.unsqueeze(0) for x in step_outputs(hm, clean, block, s)])[0] for s in steps])
        co = torch.stack([metric(*[x.unsqueeze(0) for x in step_outputs(hm, corrupt, block, s)])[0] for s in steps])
        return cl, co  # [steps, batch]
    cl = metric(*[x.unsqueeze(0) for x in final_outputs(hm, clean, block)])[0]
    co = metric(*[x.unsqueeze(0) for x in final_outputs(hm, corrupt, block)])[0]
    return cl, co


def _sweep(hm, clean, corrupt, source, metric, runs, shape, axes, *, mode, block, batched, batch_size, hook, steps):
    if batched:
        values = run_patches(
            hm, corrupt, source, runs, metric, mode=mode, replay=clean, block=block, batch_size=batch_size
        )
    else:
        values = run_patches_loop(hm, corrupt, source, runs, metric, mode=mode, replay=clean, block=block)
    values = values.view(*shape, corrupt.batch_size)
    cl, co = _baselines(hm, clean, corrupt, metric, block, mode, steps)
    if mode == "step":
        extra = [1] * (len(shape) - 1)
        cl, co = cl.view(len(steps), *extra, -1), co.view(len(steps), *extra, -1)
    return PatchingResult(values, axes, cl, co, getattr(metric, "name", "metric"), mode, hook, block)


def step_layer_sweep(
    hm,
    clean: Trajectory,
    corrupt: Trajectory,
    clean_cache: DenoisingCache,
    metric: Callable,
    *,
    hook: str = RESID_POST,
    steps: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    positions=None,
    block: int = 0,
    mode: str = "free",
    batched: bool = True,
    batch_size: int = 64,
) -> PatchingResult:
    """Patch ``hook`` (a template with ``{layer}``) from the clean run into the corrupted one at every (step, layer).

    ``values``: ``[steps, layers, batch]``. ``positions``: the canvas positions patched (None =
    all). ``batched=False`` runs the brute-force loop (:func:`run_patches_loop`).
    """
    if "{layer}" not in hook:
        raise ValueError(f"hook must be a template with '{{layer}}', e.g. '{RESID_POST}'; got '{hook}'")
    steps, layers = _steps(corrupt, block, steps, clean), _layers(hm, layers)
    runs = [Patch(hook.format(layer=layer), step, block, positions) for step in steps for layer in layers]
    return _sweep(
        hm, clean, corrupt, clean_cache, metric, runs, (len(steps), len(layers)), {"step": steps, "layer": layers},
        mode=mode, block=block, batched=batched, batch_size=batch_size, hook=hook, steps=steps,
    )  # fmt: skip


def step_position_sweep(
    hm,
    clean: Trajectory,
    corrupt: Trajectory,
    clean_cache: DenoisingCache,
    metric: Callable,
    *,
    hook: str = "decoder.blocks.0.hook_resid_pre",
    steps: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    block: int = 0,
    mode: str = "free",
    batched: bool = True,
    batch_size: int = 64,
) -> PatchingResult:
    """Patch one ``hook`` at one canvas position at a time, at every step: ``values`` ``[steps, positions, batch]``."""
    steps = _steps(corrupt, block, steps, clean)
    canvas = corrupt.canvas_length
    positions = list(range(canvas)) if positions is None else list(positions)
    position_mask(positions, 1, canvas, what="step_position_sweep")
    runs = [Patch(hook, step, block, [p]) for step in steps for p in positions]
    return _sweep(
        hm, clean, corrupt, clean_cache, metric, runs, (len(steps), len(positions)), {"step": steps, "position": positions},
        mode=mode, block=block, batched=batched, batch_size=batch_size, hook=hook, steps=steps,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Path patching through the channels between steps

CHANNELS = ("self_conditioning", "accepted_tokens", "renoised_tokens", "tokens", "all")
_EMBED, _SOFT = "decoder.hook_embed", "decoder.sc.hook_soft_embed"


def channel_patches(clean: Trajectory, channel: str, step: int, block: int = 0) -> list[Patch]:
    """The patches that give step ``step + 1`` the clean run's input through ``channel``.

    Information reaches step s+1 from step s only through its inputs: the self-conditioning signal
    (``decoder.sc.hook_soft_embed``, the soft embedding of the previous logits) and the canvas tokens
    (``decoder.hook_embed``): those the clean run *accepted* at step s (sampled tokens kept) and
    those it *renoised* (fresh random tokens, shared by the coupled runs' draws).
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel '{channel}'; valid channels: {', '.join(CHANNELS)}")
    accepted = clean.step(block, step).accepted
    nxt = step + 1
    parts = {
        "self_conditioning": [Patch(_SOFT, nxt, block)],
        "accepted_tokens": [Patch(_EMBED, nxt, block, accepted.clone())],
        "renoised_tokens": [Patch(_EMBED, nxt, block, ~accepted)],
        "tokens": [Patch(_EMBED, nxt, block)],
    }
    parts["all"] = parts["self_conditioning"] + parts["tokens"]
    return parts[channel]


def path_patching(
    hm,
    clean: Trajectory,
    corrupt: Trajectory,
    metric: Callable,
    *,
    channels: Sequence[str] = CHANNELS,
    steps: Sequence[int] | None = None,
    block: int = 0,
    mode: str = "free",
    clean_cache: DenoisingCache | None = None,
    batched: bool = True,
    batch_size: int = 64,
) -> PatchingResult:
    """Cross-step path patching: give step s+1 of the corrupted run the clean run's input through one channel.

    ``values``: ``[channels, steps, batch]``, where ``steps`` are the boundaries s -> s+1 (default:
    every s with s+1 run by both runs). ``mode="free"`` follows the effect to the output through
    every later step (resampling included); ``"chain"`` only through continuous self-conditioning.
    The clean run's step inputs are read from ``clean_cache`` (``decoder.hook_embed`` and
    ``decoder.sc.hook_soft_embed``); without them the clean run is regenerated once (same draws)
    to record them. ``result.normalised()`` is the fraction of the clean-vs-corrupt gap a channel
    restores.
    """
    channels = list(channels)
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel '{channel}'; valid channels: {', '.join(CHANNELS)}")
    if mode not in ("free", "chain"):
        raise ValueError(f"path patching follows effects to the output: mode 'free' or 'chain', got '{mode}'")
    limit = min(clean.block(block).n_steps, corrupt.block(block).n_steps) - 1
    steps = list(range(limit)) if steps is None else list(steps)
    bad = [s for s in steps if not 0 <= s < limit]
    if bad:
        raise IndexError(f"boundary step {bad[0]} out of range: both runs reach step s+1 for s in 0..{limit - 1}")
    if clean_cache is None or not all((name, 1, block) in clean_cache for name in (_EMBED, _SOFT)):
        _, clean_cache = hm.run_with_cache(
            clean.prompt_ids,
            [_EMBED, _SOFT],
            blocks=[block],
            attention_mask=clean.attention_mask,
            replay=clean,
            bottleneck=clean.bottleneck,
            **generation_kwargs(clean),
        )
    runs = [channel_patches(clean, channel, s, block) for channel in channels for s in steps]
    result = _sweep(
        hm, clean, corrupt, clean_cache, metric, runs, (len(channels), len(steps)), {"channel": channels, "step": steps},
        mode=mode, block=block, batched=batched, batch_size=batch_size, hook="channels", steps=steps,
    )  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------
# Attribution patching


@dataclass
class AttributionResult:
    """Attribution patching estimates: ``values`` ``[steps, layers, batch, pos]``.

    ``values[s, l, b, p] = grad_{act} metric · (clean act - corrupt act)`` at (step s, layer l,
    prompt b, position p), the first-order estimate of patching that single activation in
    ``"chain"`` mode. ``per_step_layer()`` sums over positions: the estimate for patching all
    positions at once. ``metric_value``: the corrupted run's metric ``[batch]``.
    """

    values: torch.Tensor
    steps: list[int]
    layers: list[int]
    hook: str
    metric: str
    metric_value: torch.Tensor
    block: int = 0

    def per_step_layer(self) -> torch.Tensor:
        """``[steps, layers, batch]``."""
        return self.values.sum(-1)


def attribution_patching(
    hm,
    clean_cache: DenoisingCache,
    corrupt: Trajectory,
    metric: Callable,
    *,
    hook: str = RESID_POST,
    layers: Sequence[int] | None = None,
    block: int = 0,
) -> AttributionResult:
    """Gradient × activation difference for every (step, layer, position), from one forward and one backward pass.

    The forward pass re-runs every step of the corrupted run's ``block`` on its recorded canvases
    (teacher-forced), passing each step's self-conditioning signal on to the next differentiably,
    as in ``"chain"`` mode; the metric reads each row's last step. One backward pass gives the
    gradient of the metric (summed over prompts, which do not interact) with respect to every
    activation ``hook.format(layer=l)`` at every step. Compare with ``run_patches(mode="chain")``.
    """
    if not getattr(metric, "differentiable", True):
        raise ValueError(
            f"attribution patching needs a differentiable metric; '{getattr(metric, 'name', metric)}' is not"
        )
    if "{layer}" not in hook:
        raise ValueError(f"hook must be a template with '{{layer}}', e.g. '{RESID_POST}'; got '{hook}'")
    layers = _layers(hm, layers)
    if hm.hook_dict[hm.resolve_names(hook.format(layer=layers[0]))[0]].pos_dim != 1:
        raise ValueError(
            f"attribution patching sums over features per canvas position; '{hook}' is not [batch, pos, ...]"
        )
    model = hm.model
    record = corrupt.block(block)
    runtime = record.runtime
    if runtime is None:
        raise ValueError(
            "the corrupted trajectory has no runtime state (loaded from disk): call hm.restore_runtime first"
        )
    config = _generation_config(model, corrupt)
    bottleneck = Bottleneck.parse(corrupt.bottleneck)
    dtype = model.model.decoder.embed_tokens.weight.dtype
    names = {hook.format(layer=layer): i for i, layer in enumerate(layers)}
    acts: dict[tuple[int, int], torch.Tensor] = {}

    def grab(tensor, hook):
        acts[(hook.step, names[hook.name])] = tensor
        return None

    signal = runtime.initial_self_conditioning
    final = None
    context = hm.context
    with hm.hooks([(name, grab) for name in names]), torch.enable_grad():
        try:
            for step in record.steps:
                kwargs = {
                    "decoder_input_ids": step.canvas_in.clone(),
                    "self_conditioning_logits": signal if bottleneck.feeds_signal else None,
                    "decoder_attention_mask": runtime.mask_mapping,
                    "past_key_values": snapshot_cache(runtime.past_key_values),
                    "decoder_position_ids": runtime.decoder_position_ids,
                    **runtime.model_kwargs,
                }
                context.stack, context.block, context.step = "decoder", block, step.step
                raw = model(**kwargs).logits
                context.stack = context.block = context.step = None
                final = raw if final is None else torch.where(step.active[:, None, None], raw, final)
                cur = torch.tensor(step.hf_step, dtype=torch.int32, device=raw.device)
                processed = runtime.logits_processor(runtime.input_ids, raw, cur_step=cur)
                finished_before = ~step.active
                if signal is not None and finished_before.any():
                    processed = torch.where(finished_before[:, None, None], signal, processed)
                signal = apply_bottleneck(
                    bottleneck, processed.to(dtype), signal, step.sampled, step.argmax, finished_before
                )
        finally:
            context.stack = context.block = context.step = None
        value = metric(final.unsqueeze(0), final.argmax(-1).unsqueeze(0))[0]
        keys = sorted(acts)
        grads = torch.autograd.grad(value.sum(), [acts[k] for k in keys], allow_unused=True)
    n_steps = record.n_steps
    batch, canvas = corrupt.batch_size, corrupt.canvas_length
    values = torch.zeros(n_steps, len(layers), batch, canvas)
    del config
    for key, grad in zip(keys, grads, strict=True):
        if grad is None:
            continue
        step, index = key
        name = hook.format(layer=layers[index])
        delta = clean_cache.get(name, step, block).to(grad.device, grad.dtype) - acts[key].detach()
        values[step, index] = (
            (grad * delta).flatten(2).sum(-1).float().cpu() if grad.dim() > 3 else (grad * delta).sum(-1).float().cpu()
        )
    return AttributionResult(
        values, list(range(n_steps)), layers, hook, getattr(metric, "name", "metric"), value.detach(), block
    )


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two tensors' entries (NaNs dropped)."""
    a, b = a.flatten().double(), b.flatten().double()
    keep = ~(a.isnan() | b.isnan())
    a, b = a[keep], b[keep]
    if a.numel() < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


__all__ = [
    "CHANNELS",
    "MODES",
    "AnswerProb",
    "AttributionResult",
    "ExactMatch",
    "LogitDiff",
    "Patch",
    "PatchingResult",
    "attribution_patching",
    "channel_patches",
    "correlation",
    "coupled_runs",
    "final_outputs",
    "generation_kwargs",
    "pad_after_eos",
    "path_patching",
    "position_mask",
    "repeat_kv_cache",
    "run_patches",
    "run_patches_loop",
    "step_layer_sweep",
    "step_outputs",
    "step_position_sweep",
]
