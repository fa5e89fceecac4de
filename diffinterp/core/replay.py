"""Re-running recorded steps exactly: the inputs of any (block, step) of a trajectory.

``step_inputs`` gives the keyword arguments for ``hm.model(**kwargs)`` that reproduce one recorded
decoder pass (canvas, self-conditioning signal, KV cache, masks); ``restore_runtime`` rebuilds the
KV caches of a trajectory loaded from disk by re-encoding its own tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from diffinterp.core.bottleneck import Bottleneck, apply_bottleneck
from diffinterp.core.sampler import generation_kwargs, snapshot_cache
from diffinterp.records.trajectory import BlockRuntime, Trajectory


def _runtime(trajectory: Trajectory, block: int) -> BlockRuntime:
    record = trajectory.block(block)
    if record.runtime is None:
        raise ValueError(
            "this trajectory has no runtime state (it was loaded from disk): call "
            "hm.restore_runtime(trajectory) to rebuild its KV caches before re-running steps"
        )
    return record.runtime


def self_conditioning_inputs(hm, trajectory: Trajectory, block: int, upto: int) -> list[torch.Tensor | None]:
    """The self-conditioning logits fed to steps 0..``upto`` of ``block`` (bookkeeping signal).

    Built from the recorded float32 logits where present; otherwise by re-running the earlier
    steps of the block on their recorded canvases (teacher-forced, no sampling).
    """
    record = trajectory.block(block)
    trajectory.step(block, upto)
    runtime = _runtime(trajectory, block)
    bottleneck = Bottleneck.parse(trajectory.bottleneck)
    dtype = getattr(torch, trajectory.generation["embeddings_dtype"])
    signals: list[torch.Tensor | None] = [runtime.initial_self_conditioning]
    for step in record.steps[:upto]:
        previous = signals[-1]
        logits = step.logits
        if logits is None or logits.dtype != torch.float32:
            kwargs = _decoder_kwargs(runtime, step.canvas_in, previous, bottleneck)
            with torch.no_grad():
                logits = hm.model(**kwargs).logits
        logits = logits.to(step.canvas_in.device)
        processed = runtime.logits_processor(
            runtime.input_ids, logits, cur_step=torch.tensor(step.hf_step, dtype=torch.int32, device=logits.device)
        )
        finished_before = ~step.active
        if previous is not None and finished_before.any():
            processed = torch.where(finished_before[:, None, None], previous, processed)
        signal = processed.to(dtype)
        signals.append(apply_bottleneck(bottleneck, signal, previous, step.sampled, step.argmax, finished_before))
    return signals


def _decoder_kwargs(runtime: BlockRuntime, canvas: torch.Tensor, signal, bottleneck: Bottleneck) -> dict[str, Any]:
    return {
        "decoder_input_ids": canvas.clone(),
        "self_conditioning_logits": signal if bottleneck.feeds_signal else None,
        "decoder_attention_mask": runtime.mask_mapping,
        "past_key_values": snapshot_cache(runtime.past_key_values),
        "decoder_position_ids": runtime.decoder_position_ids,
        **runtime.model_kwargs,
    }


def step_inputs(hm, trajectory: Trajectory, block: int, step: int) -> dict[str, Any]:
    """Keyword arguments for ``hm.model(**kwargs)`` that re-run one recorded step exactly."""
    record = trajectory.step(block, step)
    runtime = _runtime(trajectory, block)
    signal = self_conditioning_inputs(hm, trajectory, block, step)[step]
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
