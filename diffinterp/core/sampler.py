"""The instrumented denoising loop: ``DiffusionGemmaForBlockDiffusion.generate``, step by step.

The loop below follows transformers' ``generate`` line for line and calls the model's own helpers
(``_prepare_*``, ``_denoising_step``, ``_finalize_canvas``), so it makes the same random draws in
the same order and returns the same ``sequences``. What it adds:

- the run context (stack, block, step) that hook points report;
- a record of every step (canvas in, sampled, argmax, accepted, entropy, optionally logits);
- the encoder KV cache and masks of every block, so any single step can be re-run exactly;
- ``bottleneck=``: what the next step's self-conditioning receives (:mod:`~diffinterp.core.bottleneck`).
- ``replay=trajectory``: restore that run's RNG state before each block's and step's random draws,
  so an intervened run samples with the same random numbers (the intervention is the only change).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSampler

from diffinterp.core.bottleneck import Bottleneck, apply_bottleneck
from diffinterp.core.inputs import (
    SAMPLER_ARGUMENTS,
    as_dtype,
    check_attention_mask,
    check_generation_kwargs,
    check_input_ids,
)
from diffinterp.core.memory import budget, logits_bytes
from diffinterp.records.cache import CacheBudgetError
from diffinterp.records.cache import human_bytes as human
from diffinterp.records.trajectory import BlockRecord, BlockRuntime, RngState, StepRecord, Trajectory


def snapshot_cache(cache: Any) -> Any:
    """A copy of a KV cache as it is now, unaffected by later encoder passes.

    Dynamic caches replace (never mutate) their key/value tensors, so copying the layer objects
    is enough and costs no memory; static caches are written in place and are cloned.
    """
    if getattr(cache, "is_compileable", False):
        return copy.deepcopy(cache)
    snapshot = copy.copy(cache)
    snapshot.layers = [copy.copy(layer) for layer in cache.layers]
    return snapshot


def temperature_at(generation_config, hf_step: int) -> float:
    """The schedule's temperature at transformers' countdown step (as its logits processor computes it)."""
    if generation_config.t_min is None or generation_config.t_max is None:
        return 1.0
    return _scheduled_temperature(
        generation_config.t_min, generation_config.t_max, generation_config.max_denoising_steps, hf_step
    )


@functools.lru_cache(maxsize=4096)
def _scheduled_temperature(t_min: float, t_max: float, n_steps: int, hf_step: int) -> float:
    # torch's float32 arithmetic on an int32 step, as the logits processor does it; kept per
    # setting and step, since every step of every run records it
    cur = torch.tensor(hf_step, dtype=torch.int32)
    return float(t_min + ((t_max - t_min) * (cur / n_steps)))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy, bit for bit what the entropy-bound sampler computes.

    The operations of ``Categorical(logits=logits).entropy()`` in the same order, less its
    argument validation (the sampler has already validated the same logits), at a sixth of its
    cost on small canvases; large logits read the sampler's own value instead
    (:func:`accept_and_read_entropy`)."""
    log_p = logits - logits.logsumexp(dim=-1, keepdim=True)
    p = torch.softmax(log_p, dim=-1)
    return -(torch.clamp(log_p, min=torch.finfo(log_p.dtype).min) * p).sum(-1)


# Logits of at least this many elements: read the entropy transformers' sampler computes instead of
# computing it again. Below it the interception's per-op cost (tens of µs a step) exceeds the
# recomputation's (benchmarks/entropy_read.py).
READ_ENTROPY_FROM = 1 << 15


class _SortInput(TorchFunctionMode):
    """Keeps the first tensor handed to ``torch.sort`` while active: in transformers'
    ``EntropyBoundSampler.accept_canvas`` that is the per-position entropy it ranks positions by."""

    def __init__(self):
        super().__init__()
        self.tensor: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.sort and self.tensor is None and args and isinstance(args[0], torch.Tensor):
            self.tensor = args[0]
        return func(*args, **(kwargs or {}))


def accept_and_read_entropy(accept: Callable, current_canvas, denoiser_canvas, logits, cur_step):
    """``accept(current_canvas, denoiser_canvas, logits, cur_step)`` (the sampler's ``accept_canvas``)
    and the per-position entropy, ``(accepted, entropy)``.

    For large logits and transformers' own ``EntropyBoundSampler.accept_canvas`` the entropy is the
    one the sampler computed (read as the input of its sort, no second pass over ``[batch, canvas,
    vocab]``); for small logits, or any other acceptance method (a subclass, a wrapper),
    :func:`token_entropy` recomputes it, bit for bit the same."""
    # read only from transformers' own method, whose sort's input is known to be the entropy
    own = getattr(accept, "__func__", None) is EntropyBoundSampler.accept_canvas
    if not own or logits.numel() < READ_ENTROPY_FROM:
        return accept(current_canvas, denoiser_canvas, logits, cur_step), token_entropy(logits)
    with _SortInput() as sorted_input:
        accepted = accept(current_canvas, denoiser_canvas, logits, cur_step)
    entropy = sorted_input.tensor
    if entropy is None or entropy.shape != logits.shape[:-1] or not entropy.is_floating_point():
        entropy = token_entropy(logits)
    return accepted, entropy


def resolve_run_limits(model, prompt_len: int, generation_config=None, **kwargs) -> tuple[int, int]:
    """(max denoising steps per block, max number of blocks) for these generation arguments."""
    own = SAMPLER_ARGUMENTS | {"attention_mask"}
    config, _ = model._prepare_generation_config(generation_config, **{k: v for k, v in kwargs.items() if k not in own})
    _, max_new_tokens = model._prepare_generated_length(config, prompt_len)
    return config.max_denoising_steps, math.ceil(max_new_tokens / model.config.canvas_length)


class _StepCapture:
    """Collects what transformers' denoising step computes internally: raw logits, samples, mask."""

    def __init__(self, sampler, bottleneck: Bottleneck):
        self.bottleneck = bottleneck
        self.values: dict[str, torch.Tensor] = {}
        self._accept = sampler.accept_canvas
        sampler.accept_canvas = self.accept_canvas

    def accept_canvas(self, current_canvas, denoiser_canvas, logits, cur_step):
        accepted, entropy = accept_and_read_entropy(self._accept, current_canvas, denoiser_canvas, logits, cur_step)
        self.values["sampled"] = denoiser_canvas
        self.values["entropy"] = entropy
        return accepted

    def decoder_forward(self, model, context) -> Callable[..., Any]:
        def forward(**kwargs):
            if not self.bottleneck.feeds_signal:
                kwargs["self_conditioning_logits"] = None
            output = model(**kwargs)  # __call__, so hooks on the top-level module fire
            context.raise_if_nonfinite()  # a hook's NaN is reported by name, before the sampler draws from it
            self.values["logits"] = output.logits
            return output

        return forward


def sample(hm, input_ids: torch.LongTensor, *args, enable_grad: bool = False, **kwargs) -> Trajectory:
    """Generate like ``hm.model.generate`` and record the trajectory (see the module docstring).

    Takes ``generate``'s arguments (``past_key_values``, ``streamer``, ``generation_config``,
    ``logits_processor``, ``stopping_criteria`` and generation settings as keywords) plus
    ``bottleneck=``; ``record_logits`` keeps every step's raw logits (on ``logits_device`` as
    ``logits_dtype``); ``progress`` shows a progress bar over denoising steps; ``enable_grad`` keeps
    autograd on (transformers' generate turns it off), for gradient-based instruments.
    """
    with torch.set_grad_enabled(enable_grad):
        return _sample(hm, input_ids, *args, **kwargs)


def _sample(
    hm,
    input_ids: torch.LongTensor,
    past_key_values=None,
    streamer=None,
    generation_config=None,
    logits_processor=None,
    stopping_criteria=None,
    *,
    bottleneck: str | Bottleneck = "continuous",
    record_logits: bool = False,
    logits_device: str | torch.device | None = None,
    logits_dtype: torch.dtype | None = None,
    progress: bool = False,
    replay: Trajectory | None = None,
    **kwargs,
) -> Trajectory:
    model = hm.model
    context = hm.context
    bottleneck = Bottleneck.parse(bottleneck)
    check_input_ids(input_ids, model.config.text_config.vocab_size)
    check_generation_kwargs(kwargs)
    check_attention_mask(kwargs.get("attention_mask"), input_ids)
    logits_dtype = as_dtype(logits_dtype, "logits_dtype")
    if kwargs.get("attention_mask", 0) is None:
        kwargs.pop("attention_mask")

    # 0. Input preparation (as in transformers' generate)
    generation_config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    batch_size, cur_len = input_ids.shape
    initial_input_ids_len = cur_len
    if past_key_values is not None:
        cur_len += past_key_values.get_seq_length()
    max_length, max_new_tokens = model._prepare_generated_length(generation_config, cur_len)
    canvas_length = model.config.canvas_length
    max_new_canvases = math.ceil(max_new_tokens / canvas_length)
    if past_key_values is not None and generation_config.cache_implementation is not None:
        raise ValueError("Cannot provide both `past_key_values` and `generation_config.cache_implementation`.")
    hm.check_targets(generation_config.max_denoising_steps, max_new_canvases)
    if record_logits:  # the same guard as a cache's: refuse before the run, not after an hour of it
        needed = logits_bytes(
            batch_size,
            canvas_length,
            model.config.text_config.vocab_size,
            generation_config.max_denoising_steps,
            max_new_canvases,
            logits_dtype,
        )
        limit = budget("auto", logits_device if logits_device is not None else input_ids.device)
        if needed > limit:
            raise CacheBudgetError(
                f"recording the logits of this run needs up to {human(needed)}, over the {human(limit)} that fit in "
                "memory: record them as logits_dtype=torch.bfloat16, on another device (logits_device=), for fewer "
                "prompts or steps (max_denoising_steps=), or read what you need from them step by step with a "
                "hook on decoder.hook_logits instead of recording them"
            )

    device = input_ids.device
    eos_tensor = None
    finished_sequences = torch.zeros(batch_size, dtype=torch.bool, device=device)
    decoder_forward_passes = torch.zeros(batch_size, dtype=torch.int, device=device)
    if past_key_values is None:
        past_key_values = model._prepare_cache_for_generation(
            generation_config=generation_config, batch_size=batch_size, max_length=max_length
        )
    if generation_config.eos_token_id is not None:
        eos_tensor = torch.tensor(generation_config.eos_token_id, device=input_ids.device)
    encoder_position_ids = torch.arange(
        cur_len - input_ids.shape[1], cur_len, dtype=torch.int32, device=input_ids.device
    ).unsqueeze(0)
    decoder_position_ids = torch.arange(
        cur_len, cur_len + canvas_length, dtype=torch.int32, device=input_ids.device
    ).unsqueeze(0)
    if "attention_mask" in kwargs:
        if len(model_kwargs["attention_mask"].shape) > 2:
            raise ValueError("`attention_mask` passed to `generate` must be 2D.")
        attention_mask = model_kwargs.pop("attention_mask").bool()
    else:
        attention_mask = torch.ones((batch_size, cur_len), dtype=torch.bool, device=input_ids.device)
    prompt_mask = attention_mask.clone()
    decoder_attention_mask = torch.nn.functional.pad(attention_mask, (0, canvas_length), value=True)

    sampler = model._prepare_sampler(generation_config)
    logits_processor = model._prepare_logits_processor(generation_config, logits_processor)
    stopping_criteria = model._prepare_ar_stopping_criteria(generation_config, stopping_criteria)
    diffusion_stopping_criteria = model._prepare_diffusion_stopping_criteria(generation_config)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    capture = _StepCapture(sampler, bottleneck)
    decoder_forward = capture.decoder_forward(model, context)
    embeddings_dtype = model.model.decoder.embed_tokens.weight.dtype
    prompt_ids = input_ids.clone()

    bar = _progress_bar(progress, max_new_canvases * generation_config.max_denoising_steps)
    blocks: list[BlockRecord] = []
    is_prefill = True
    try:
        for block in range(max_new_canvases):
            # 1.a. Encode all previous tokens into the KV cache.
            unprocessed_input_ids, encoder_mask_mapping = model._prepare_encoder_inputs(
                input_ids=input_ids,
                attention_mask=attention_mask,
                encoder_position_ids=encoder_position_ids,
                past_key_values=past_key_values,
                is_prefill=is_prefill,
                canvas_length=canvas_length,
                batch_size=batch_size,
                **model_kwargs,
            )
            context.stack, context.block, context.step = "encoder", block, None
            encoder_outputs = model.model.encoder(
                input_ids=unprocessed_input_ids,
                attention_mask=encoder_mask_mapping,
                past_key_values=past_key_values,
                position_ids=encoder_position_ids,
                **model_kwargs,
            )
            context.raise_if_nonfinite()
            past_key_values = encoder_outputs.past_key_values
            is_prefill = False

            # 1.b. Prepare the denoising loop.
            initial_self_conditioning = model_kwargs.get("self_conditioning_logits")
            block_rng = _replayed_rng(replay, block, None)
            current_canvas, self_conditioning_logits, mask_mapping, finished_denoising = model._prepare_denoiser_inputs(
                decoder_attention_mask=decoder_attention_mask,
                past_key_values=past_key_values,
                sampler=sampler,
                diffusion_stopping_criteria=diffusion_stopping_criteria,
                batch_size=batch_size,
                device=device,
                model_kwargs=model_kwargs,
            )
            argmax_canvas = current_canvas
            runtime = BlockRuntime(
                past_key_values=snapshot_cache(past_key_values),
                mask_mapping=mask_mapping,
                decoder_position_ids=decoder_position_ids,
                input_ids=input_ids,
                logits_processor=logits_processor,
                initial_self_conditioning=initial_self_conditioning,
                model_kwargs=dict(model_kwargs),
            )
            record = BlockRecord(block, input_ids.shape[1], [], current_canvas, runtime, rng_state=block_rng)
            blocks.append(record)

            # 1.c. Denoising steps (transformers counts cur_step down from N to 1).
            for step, cur_step in enumerate(reversed(range(1, generation_config.max_denoising_steps + 1))):
                decoder_forward_passes += ~(finished_denoising | finished_sequences)
                step_rng = _replayed_rng(replay, block, step)
                finished_before = finished_denoising.clone()
                canvas_in, signal_in = current_canvas, self_conditioning_logits
                context.stack, context.block, context.step = "decoder", block, step
                current_canvas, argmax_canvas, signal, finished_denoising = model._denoising_step(
                    decoder_forward=decoder_forward,
                    current_canvas=current_canvas,
                    argmax_canvas=argmax_canvas,
                    input_ids=input_ids,
                    decoder_position_ids=decoder_position_ids,
                    self_conditioning_logits=self_conditioning_logits,
                    mask_mapping=mask_mapping,
                    past_key_values=past_key_values,
                    finished_denoising=finished_denoising,
                    cur_step=cur_step,
                    sampler=sampler,
                    logits_processor=logits_processor,
                    diffusion_stopping_criteria=diffusion_stopping_criteria,
                    **model_kwargs,
                )
                sampled = capture.values["sampled"]
                self_conditioning_logits = apply_bottleneck(
                    bottleneck, signal, signal_in, sampled, argmax_canvas, finished_before
                )
                logits = None
                if record_logits:
                    logits = capture.values["logits"].detach().to(device=logits_device, dtype=logits_dtype, copy=True)
                record.steps.append(
                    StepRecord(
                        step=step,
                        hf_step=cur_step,
                        temperature=temperature_at(generation_config, cur_step),
                        canvas_in=canvas_in,
                        sampled=sampled,
                        argmax=argmax_canvas,
                        accepted=sampler.accepted_token_mask.clone(),
                        canvas_out=current_canvas,
                        entropy=capture.values["entropy"],
                        active=~finished_before,
                        logits=logits,
                        rng_state=step_rng,
                    )
                )
                bar.update(1)
                if streamer is not None and hasattr(streamer, "put_draft"):
                    streamer_kwargs = {"value": argmax_canvas.cpu()}
                    if getattr(streamer, "_takes_logits", False):
                        streamer_kwargs = {"logits": signal.cpu()}
                    streamer.put_draft(**streamer_kwargs)
                if torch.all(finished_denoising):
                    break
            bar.update(generation_config.max_denoising_steps - record.n_steps)

            # 1.d./1.e. Append the argmax canvas; stop and pad finished rows.
            input_ids = torch.cat([input_ids, argmax_canvas], dim=-1)
            input_ids, finished_sequences = model._finalize_canvas(
                input_ids=input_ids,
                finished_sequences=finished_sequences,
                generation_config=generation_config,
                stopping_criteria=stopping_criteria,
                canvas_length=canvas_length,
                eos_tensor=eos_tensor,
            )
            record.final_canvas = input_ids[:, -canvas_length:].clone()
            if streamer is not None:
                streamer.put(input_ids[:, -canvas_length:].cpu())
            if torch.all(finished_sequences):
                break

            # 1.f. Prepare the next block.
            cur_len, decoder_attention_mask, attention_mask, encoder_position_ids, decoder_position_ids = (
                model._prepare_kwargs_for_next_canvas(
                    attention_mask=attention_mask,
                    decoder_attention_mask=decoder_attention_mask,
                    decoder_position_ids=decoder_position_ids,
                    canvas_length=canvas_length,
                    cur_len=cur_len,
                )
            )
    finally:
        context.stack = context.block = context.step = None
        bar.close()
    if streamer is not None:
        streamer.end()

    tokens_per_forward = model._compute_tokens_per_forward(
        input_ids, decoder_forward_passes, initial_input_ids_len, generation_config.pad_token_id
    )
    return Trajectory(
        prompt_ids=prompt_ids,
        attention_mask=prompt_mask,
        sequences=input_ids,
        blocks=blocks,
        bottleneck=str(bottleneck),
        generation=_generation_summary(generation_config, max_new_tokens, embeddings_dtype),
        canvas_length=canvas_length,
        tokens_per_forward=tokens_per_forward,
    )


def _replayed_rng(replay: Trajectory | None, block: int, step: int | None) -> RngState:
    """The RNG state before a block's canvas draw (step None) or a step's draws.

    With ``replay``, the state recorded there at the same (block, step) is restored first, so this
    run makes the same random draws (coupled samples); past the replayed run's steps the stream
    simply continues.
    """
    if replay is not None and block < len(replay.blocks):
        recorded = replay.blocks[block]
        state = (
            recorded.rng_state
            if step is None
            else (recorded.steps[step].rng_state if step < recorded.n_steps else None)
        )
        if state is not None:
            state.restore()
    return RngState.capture()


def _generation_summary(config, max_new_tokens: int, embeddings_dtype: torch.dtype) -> dict[str, Any]:
    sampler_config = config.sampler_config
    return {
        "max_new_tokens": max_new_tokens,
        "max_denoising_steps": config.max_denoising_steps,
        "entropy_bound": getattr(sampler_config, "entropy_bound", None),
        "t_min": config.t_min,
        "t_max": config.t_max,
        "stability_threshold": config.stability_threshold,
        "confidence_threshold": config.confidence_threshold,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "embeddings_dtype": str(embeddings_dtype).removeprefix("torch."),
    }


class _NoBar:
    def update(self, _n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="denoising", unit="step")


def never_stop_early(max_denoising_steps: int) -> dict[str, int]:
    """Generation kwargs that switch adaptive stopping off: a stability window longer than the run,
    so every block takes all ``max_denoising_steps``."""
    return {"stability_threshold": max_denoising_steps + 1}


def generation_kwargs(trajectory: Trajectory) -> dict[str, Any]:
    """``generate`` keywords that reproduce a trajectory's sampler settings (the bottleneck aside)."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    settings = trajectory.generation
    kwargs = {
        key: settings[key]
        for key in (
            "max_new_tokens",
            "max_denoising_steps",
            "t_min",
            "t_max",
            "stability_threshold",
            "confidence_threshold",
            "eos_token_id",
            "pad_token_id",
        )
        if settings.get(key) is not None
    }
    if settings.get("entropy_bound") is not None:
        kwargs["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(settings["entropy_bound"]))
    return kwargs
