"""Re-running recorded steps exactly: the inputs of any (block, step) of a trajectory.

``step_inputs`` gives the keyword arguments for ``hm.model(**kwargs)`` that reproduce one recorded
decoder pass (canvas, self-conditioning signal, KV cache, masks); ``restore_runtime`` rebuilds the
KV caches of a trajectory loaded from disk by re-encoding its own tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from diffinterp.core.bottleneck import Bottleneck, apply_bottleneck
from diffinterp.core.sampler import generation_kwargs, snapshot_cache
from diffinterp.records.trajectory import BlockRuntime, StepRecord, Trajectory


def _runtime(trajectory: Trajectory, block: int) -> BlockRuntime:
    record = trajectory.block(block)
    if record.runtime is None:
        raise ValueError(
            "this trajectory has no runtime state (it was loaded from disk): call "
            "hm.restore_runtime(trajectory) to rebuild its KV caches before re-running steps"
        )
    return record.runtime


@dataclass
class SignalMemo:
    """The self-conditioning signal entering ``step`` of one block, derived for one model state.

    Kept on the block's runtime so that visiting a trajectory's steps in order re-runs each earlier
    step once (S decoder passes for S steps, not S²/2). One signal is held (the size of one step's
    logits), not all of them. ``model_key`` ties it to the model and its weights: an in-place edit
    of a parameter bumps its version and the memo is derived again.
    """

    model_key: tuple
    step: int
    signal: torch.Tensor | None


def _model_key(model: torch.nn.Module) -> tuple:
    """What the derived signals depend on besides the trajectory: the model object, its attention
    kernel, and each parameter's identity, storage and in-place version. (A write through
    ``param.data[...]`` bumps none of them: call :func:`forget_signals` after one.)"""
    kernel = getattr(model.config, "_attn_implementation", None)
    return (id(model), kernel, *((id(p), p.data_ptr(), p._version) for p in model.parameters()))


def has_torch_hooks(model: torch.nn.Module) -> bool:
    """Whether any forward (pre-)hook could change a pass of ``model``: diffinterp's, a user's
    own torch hooks, or torch's global module hooks. Passes run with one are never memoised."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def forget_signals(trajectory: Trajectory) -> None:
    """Drop the memoised signals of every block (after editing weights through ``.data``)."""
    for record in trajectory.blocks:
        if record.runtime is not None:
            record.runtime.signal_memo = None


def _next_signal(runtime: BlockRuntime, step, logits: torch.Tensor, previous, bottleneck: Bottleneck, dtype):
    """The signal entering the step after ``step``, from that step's raw logits (the sampler's rule)."""
    logits = logits.to(step.canvas_in.device)
    processed = runtime.logits_processor(
        runtime.input_ids, logits, cur_step=torch.tensor(step.hf_step, dtype=torch.int32, device=logits.device)
    )
    finished_before = ~step.active
    if previous is not None and finished_before.any():
        processed = torch.where(finished_before[:, None, None], previous, processed)
    signal = processed.to(dtype)
    return apply_bottleneck(bottleneck, signal, previous, step.sampled, step.argmax, finished_before)


@dataclass
class ReplayedStep:
    """One recorded step re-run: its record, the signal entering it (``[batch, canvas, V]`` or
    None) and its raw logits ``[batch, canvas, V]`` (the recorded float32 ones, or re-run)."""

    step: StepRecord
    signal: torch.Tensor | None
    logits: torch.Tensor


def replayed_steps(hm, trajectory: Trajectory, block: int, stop: int | None = None) -> Iterator[ReplayedStep]:
    """Steps ``0 .. stop - 1`` of ``block`` in order, each with the signal entering it and its logits.

    At most one decoder pass per step (none for a step whose float32 logits were recorded): each
    step's logits give the next step's signal. Leaves the block's memo at the last step yielded + 1.
    """
    runtime = _runtime(trajectory, block)
    key = _model_key(hm.model)
    store = not has_torch_hooks(hm.model)
    memo = SignalMemo(key, 0, runtime.initial_self_conditioning)
    for replayed, _ in _walk(hm, trajectory, block, memo, stop, store):
        yield replayed


def _walk(
    hm, trajectory: Trajectory, block: int, memo: SignalMemo, stop: int | None, store: bool
) -> Iterator[tuple[ReplayedStep, torch.Tensor | None]]:
    """Steps from ``memo.step`` to ``stop``, each with the signal entering the next step;
    ``store``: keep the signals derived as the block's memo (only for passes no hook could have
    changed)."""
    record = trajectory.block(block)
    runtime = _runtime(trajectory, block)
    bottleneck = Bottleneck.parse(trajectory.bottleneck)
    dtype = getattr(torch, trajectory.generation["embeddings_dtype"])
    signal = memo.signal
    for here in record.steps[memo.step : stop]:
        logits = here.logits
        if logits is None or logits.dtype != torch.float32:
            with torch.no_grad():
                logits = hm.model(**_decoder_kwargs(runtime, here.canvas_in, signal, bottleneck)).logits
        replayed = ReplayedStep(here, signal, logits)
        signal = _next_signal(runtime, here, logits, signal, bottleneck, dtype)
        if store and here.step + 1 < record.n_steps:
            runtime.signal_memo = SignalMemo(memo.model_key, here.step + 1, signal)
        yield replayed, signal


def self_conditioning_input(hm, trajectory: Trajectory, block: int, step: int) -> torch.Tensor | None:
    """The self-conditioning logits fed to ``step`` of ``block`` (bookkeeping signal; None at step 0
    without an initial signal).

    Built from the recorded float32 logits where present; otherwise by re-running the earlier steps
    of the block on their recorded canvases (teacher-forced, no sampling), continuing from the last
    signal derived for this block (:class:`SignalMemo`) when it is not past ``step``.
    """
    trajectory.step(block, step)
    runtime = _runtime(trajectory, block)
    key = _model_key(hm.model)
    store = not has_torch_hooks(hm.model)  # a hook may change these passes: derive afresh, keep nothing
    memo = runtime.signal_memo if store else None
    if memo is None or memo.model_key != key or memo.step > step:
        memo = SignalMemo(key, 0, runtime.initial_self_conditioning)
    signal = memo.signal
    for _, after in _walk(hm, trajectory, block, memo, step, store):
        signal = after
    if store:
        runtime.signal_memo = SignalMemo(key, step, signal)
    return signal


def note_step_logits(hm, trajectory: Trajectory, block: int, step: int, logits: torch.Tensor) -> None:
    """Advance the block's memo past ``step`` with logits just computed for it by an unhooked re-run,
    so the next step's signal needs no second forward pass. Ignored unless the memo is at ``step``."""
    runtime = _runtime(trajectory, block)
    memo = runtime.signal_memo
    record = trajectory.block(block)
    if memo is None or memo.step != step or memo.model_key != _model_key(hm.model) or step + 1 >= record.n_steps:
        return
    bottleneck = Bottleneck.parse(trajectory.bottleneck)
    dtype = getattr(torch, trajectory.generation["embeddings_dtype"])
    signal = _next_signal(runtime, record.steps[step], logits, memo.signal, bottleneck, dtype)
    runtime.signal_memo = SignalMemo(memo.model_key, step + 1, signal)


def _decoder_kwargs(runtime: BlockRuntime, canvas: torch.Tensor, signal, bottleneck: Bottleneck) -> dict[str, Any]:
    return {
        "decoder_input_ids": canvas.clone(),
        # a copy: the caller may edit it in place, and the original may be the block's memo
        "self_conditioning_logits": signal.clone() if bottleneck.feeds_signal and signal is not None else None,
        "decoder_attention_mask": runtime.mask_mapping,
        "past_key_values": snapshot_cache(runtime.past_key_values),
        "decoder_position_ids": runtime.decoder_position_ids,
        **runtime.model_kwargs,
    }


def step_inputs(hm, trajectory: Trajectory, block: int, step: int) -> dict[str, Any]:
    """Keyword arguments for ``hm.model(**kwargs)`` that re-run one recorded step exactly."""
    record = trajectory.step(block, step)
    runtime = _runtime(trajectory, block)
    signal = self_conditioning_input(hm, trajectory, block, step)
    return _decoder_kwargs(runtime, record.canvas_in, signal, Bottleneck.parse(trajectory.bottleneck))


def restore_runtime(hm, trajectory: Trajectory) -> Trajectory:
    """Rebuild the KV caches and masks of a loaded trajectory by re-encoding its own tokens.

    The encoder passes are the sampler's (same inputs, same order), so ``step_inputs`` then
    re-runs recorded steps exactly. Custom logits processors of the original run are not saved;
    the temperature schedule is rebuilt from the recorded settings.
    """
    model = hm.model
    generation_config, _ = model._prepare_generation_config(None, **generation_kwargs(trajectory))
    device = model.device
    input_ids = trajectory.prompt_ids.to(device)
    attention_mask = trajectory.attention_mask.to(device).bool()
    batch_size, cur_len = input_ids.shape
    canvas_length = trajectory.canvas_length
    max_length, _ = model._prepare_generated_length(generation_config, cur_len)
    past_key_values = model._prepare_cache_for_generation(generation_config, batch_size, max_length)
    logits_processor = model._prepare_logits_processor(generation_config, None)
    encoder_position_ids = torch.arange(0, cur_len, dtype=torch.int32, device=device).unsqueeze(0)
    decoder_position_ids = torch.arange(cur_len, cur_len + canvas_length, dtype=torch.int32, device=device).unsqueeze(0)
    decoder_attention_mask = torch.nn.functional.pad(attention_mask, (0, canvas_length), value=True)
    with torch.no_grad():
        for record in trajectory.blocks:
            unprocessed_input_ids, encoder_mask_mapping = model._prepare_encoder_inputs(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encoder_position_ids=encoder_position_ids,
                past_key_values=past_key_values,
                is_prefill=record.block == 0,
                canvas_length=canvas_length,
                batch_size=batch_size,
            )
            past_key_values = model.model.encoder(
                input_ids=unprocessed_input_ids,
                attention_mask=encoder_mask_mapping,
                past_key_values=past_key_values,
                position_ids=encoder_position_ids,
            ).past_key_values
            canvas = record.steps[0].canvas_in.to(device)
            mask_mapping = model.model.decoder.create_diffusion_decoder_attention_mask(
                config=model.config,
                inputs_embeds=canvas.unsqueeze(-1),
                past_key_values=past_key_values,
                decoder_attention_mask=decoder_attention_mask,
            )
            record.runtime = BlockRuntime(
                past_key_values=snapshot_cache(past_key_values),
                mask_mapping=mask_mapping,
                decoder_position_ids=decoder_position_ids,
                input_ids=input_ids,
                logits_processor=logits_processor,
            )
            input_ids = torch.cat([input_ids, record.final_canvas.to(device)], dim=-1)
            cur_len, decoder_attention_mask, attention_mask, encoder_position_ids, decoder_position_ids = (
                model._prepare_kwargs_for_next_canvas(
                    attention_mask=attention_mask,
                    decoder_attention_mask=decoder_attention_mask,
                    decoder_position_ids=decoder_position_ids,
                    canvas_length=canvas_length,
                    cur_len=cur_len,
                )
            )
    return trajectory
