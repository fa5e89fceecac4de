"""The batched patching engine: many patched runs share each forward pass.

The target's inputs, KV cache and masks are repeated along the batch dimension, one group of rows
per patched run; :func:`run_patches` runs them in the three modes (see :mod:`diffinterp.instruments.patching`),
:func:`run_patches_loop` is the brute-force reference (one generation or step re-run per patch)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffinterp.core.bottleneck import Bottleneck, apply_bottleneck
from diffinterp.core.sampler import generation_kwargs, snapshot_cache
from diffinterp.instruments.patching.metrics import final_outputs, final_outputs_and_signals
from diffinterp.instruments.patching.patches import Patch, as_runs
from diffinterp.records.cache import DenoisingCache
from diffinterp.records.trajectory import Trajectory

MODES = ("free", "chain", "step")


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


def _finite_as(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    return bool(torch.isfinite(tensor.to(dtype) if dtype.is_floating_point else tensor).all())


class _Patcher:
    """Forward hooks that write the source activations into the rows of each patched run."""

    def __init__(self, hm, source: DenoisingCache, runs: list[list[Patch]], batch: int):
        self.hm, self.source, self.runs, self.batch = hm, source, runs, batch
        self.set_rows(torch.zeros(0, dtype=torch.long), 0)
        self.table: dict[tuple[str, int, int], list[tuple[int, Patch]]] = {}
        for index, run in enumerate(runs):
            for patch in run:
                hm.resolve_names(patch.name)
                if "*" in patch.name or "?" in patch.name:
                    raise ValueError(f"a Patch names one hook, not a pattern: '{patch.name}'")
                recorded = source.get(patch.name, patch.step, patch.block)  # fails early, naming the recorded steps
                key = (patch.name, patch.step, patch.block)
                # checked once per source, as the hook will write it (a cast to the model's dtype can overflow)
                if key not in self.table and recorded.is_floating_point() and not _finite_as(recorded, hm.model.dtype):
                    raise ValueError(
                        f"source activation of '{patch.name}' at step {patch.step}, block {patch.block} holds non-finite "
                        "values (NaN or inf): patching it in would feed them to the run; record the source again"
                    )
                self.table.setdefault(key, []).append((index, patch))
        if source.positions is not None:
            raise ValueError("the source cache was recorded at selected positions only; record every position to patch")

    def set_rows(self, rows: torch.Tensor, copies: int) -> None:
        """Before each forward pass: its rows (indices into copies × prompts, copy-major) and the
        number of runs joined so far; each row's prompt and run are derived here once per pass,
        not in every hook call."""
        self.rows, self.copies = rows, copies
        self.prompt_of_row, self.run_of_row = rows % self.batch, rows // self.batch

    @property
    def names(self) -> list[str]:
        return sorted({name for name, _, _ in self.table})

    def fwd_hooks(self):
        return [(name, self._hook) for name in self.names]

    def _hook(self, tensor: torch.Tensor, hook) -> torch.Tensor | None:
        """Rows of the forward are ``self.rows`` (indices into copies × prompts, copy-major) of the
        ``self.copies`` runs joined so far: both set by the caller before each forward pass, so the
        hook reads no device value back to the host."""
        entries = self.table.get((hook.name, hook.step, hook.block))
        if not entries:
            return None
        copies = self.copies
        entries = [(index, patch) for index, patch in entries if index < copies]
        if not entries:
            return None
        rows, prompts = self.rows.to(tensor.device), self.prompt_of_row.to(tensor.device)
        source = self.source.get(hook.name, hook.step, hook.block).to(device=tensor.device, dtype=tensor.dtype)
        pos_dim = self.hm.hook_dict[hook.name].pos_dim
        n_pos = tensor.shape[pos_dim]
        if source.shape[0] != self.batch or tuple(source.shape[1:]) != tuple(tensor.shape[1:]):
            raise ValueError(
                f"source activation of '{hook.name}' at step {hook.step} has shape {list(source.shape)}, but the "
                f"patched run's is {[self.batch, *tensor.shape[1:]]}: source and target must share batch and prompt length"
            )
        shape = [rows.numel()] + [1] * (tensor.dim() - 1)
        if all(patch.positions is None for _, patch in entries):  # whole activations: a mask over rows
            runs = self.run_of_row.to(tensor.device)
            if len(entries) == 1:
                hit = runs == entries[0][0]
            else:
                hit = torch.isin(runs, torch.tensor([index for index, _ in entries], device=tensor.device))
            return torch.where(hit.view(shape), source[prompts], tensor)
        mask = torch.zeros(copies, self.batch, n_pos, dtype=torch.bool, device=tensor.device)
        for index, patch in entries:
            mask[index] |= patch.mask(self.batch, n_pos, tensor.device)
        mask = mask.view(-1, n_pos)[rows]  # [rows, pos]
        shape[pos_dim] = n_pos
        return torch.where(mask.view(shape), source[prompts], tensor)


@dataclass
class _Start:
    """The target run's state entering ``step`` (single-run batch)."""

    canvas: torch.Tensor
    signal: torch.Tensor | None
    argmax: torch.Tensor
    finished: torch.Tensor
    history: torch.Tensor | None


def _start_state(target: Trajectory, block: int, step: int, signal: torch.Tensor | None, stability: int) -> _Start:
    record = target.block(block)
    if not 0 <= step < record.n_steps:
        raise IndexError(
            f"step {step} out of range: the target run's block {block} ran {record.n_steps} steps "
            f"(valid 0..{record.n_steps - 1})"
        )
    here = record.steps[step]
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


def _prompt_inputs(runtime, prompts: torch.Tensor, batch: int) -> tuple[Any, dict[str, Any]]:
    """The decoder inputs that depend only on which prompt each row is: its KV cache, masks,
    position ids and extra model arguments, gathered for ``prompts``."""
    static = {
        "decoder_attention_mask": {k: _index_rows(v, prompts, batch) for k, v in runtime.mask_mapping.items()},
        "decoder_position_ids": _index_rows(runtime.decoder_position_ids, prompts, batch),
        **{k: _index_rows(v, prompts, batch) for k, v in runtime.model_kwargs.items()},
    }
    return _index_kv_cache(runtime.past_key_values, prompts), static


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


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
    # One replay of the target: the outputs rows finished before their start keep, and the signal
    # entering each start step (before the patch hooks attach: they must not fire in it).
    done_logits, done_argmax, start_signals = final_outputs_and_signals(hm, target, block, starts)
    patcher = _Patcher(hm, source, runs, batch)
    context = hm.context
    device = runtime.input_ids.device
    if mode == "free":
        _check_coupled(target, replay, block)
        _check_gumbel(device)

    copies = 0
    canvas = signal = argmax = finished = final_logits = final_argmax = history = None
    prompt_inputs = None  # (rows' prompt indices, their gathered KV cache and masks)

    def rep(tensor, n):
        return _repeat_rows(tensor, n, batch)

    def cat(old, new, dim=0):
        return new.clone() if old is None else torch.cat([old, new], dim=dim)

    try:
        # a run in the context's sense: any finite check left is a device flag, read once per pass
        # the patches write source activations, each checked finite once above (not per row and call)
        with hm.hooks(patcher.fwd_hooks(), check_finite=False), torch.no_grad(), context.run("batched patching"):
            for step in range(starts[0], last_step):
                joining = sum(1 for start in starts if start == step)
                if joining:
                    state = _start_state(target, block, step, start_signals.get(step), stability)
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
                patcher.set_rows(rows, copies)
                prompts = patcher.prompt_of_row  # rows % batch, derived once for the pass and its hooks
                if rows.numel():
                    if prompt_inputs is None or not _same_rows(prompt_inputs[0], prompts):
                        # the prompts' KV cache and masks, gathered for these rows once, not every step
                        prompt_inputs = (prompts, _prompt_inputs(runtime, prompts, batch))
                    indexed_kv, static = prompt_inputs[1]
                    context.stack, context.block, context.step = "decoder", block, step
                    kwargs = {
                        "decoder_input_ids": canvas[rows].clone(),
                        "self_conditioning_logits": signal[rows]
                        if bottleneck.feeds_signal and signal is not None
                        else None,
                        **static,
                        "decoder_attention_mask": dict(static["decoder_attention_mask"]),
                        "past_key_values": snapshot_cache(indexed_kv),  # a forward may extend its own copy
                    }
                    raw = model(**kwargs).logits
                    context.raise_if_nonfinite()  # a NaN patch is reported by hook name before anything reads it
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
    if not bool(torch.isfinite(final_logits).all()):  # one read per group: patches are not checked per call
        bad = (~torch.isfinite(final_logits)).flatten(1).any(1).view(shape).any(1).nonzero().flatten().tolist()
        raise ValueError(
            f"patched runs {bad[:5]} of this group ended with NaN or inf logits: the model produced them from the "
            "patched activations (a source value that overflows the model's dtype, or the model's own NaN)"
        )
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
    runs = as_runs(runs)
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
    runs = as_runs(runs)
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
