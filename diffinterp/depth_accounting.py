"""Opaque serial depth of whole models: AR Gemma 4 per token, DiffusionGemma per step and chained.

Accounting (each choice is a parameter, so the alternatives can be reported side by side):

- **AR, per generated token**: a prefill over the prompt fills the KV cache; the argmax token (an
  interpretable state) goes through one decode step that reads the cache. The token's depth is the
  decode step's logits depth, including paths through the cached keys and values of earlier tokens.
- **Diffusion, per step**: the encoder fills the KV cache from the prompt tokens; each denoising
  step runs the decoder on a canvas of token ids and the self-conditioning signal of the previous
  step. The canvas is ids chosen by sampling (interpretable, depth 0) unless
  ``canvas_through_acceptance`` makes it inherit the depth of the entropy-based acceptance mask that
  picks which sampled ids are kept. The signal is the tempered logits (``continuous``: the chain runs
  through every step) or a token bottleneck (``argmax``, ``sample``: reset at every step; ``topk:K``
  keeps K continuous probabilities per position, so it does not reset; ``none``: no signal).

Models are built on the ``meta`` device with transformers' eager attention and the ``batched_mm``
experts implementation: the default MoE dispatch loops over the experts that received tokens (a
data-dependent ``nonzero``), which meta tensors cannot evaluate; ``batched_mm`` computes every
token's top-k experts by gathering their weights, the same arithmetic per token with a static
shape. The expert outputs are then summed over the top-k (a reduction of k terms).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM, Gemma4TextConfig
from transformers.cache_utils import DynamicCache

from diffinterp.depth import DepthReport, DepthTracer
from diffinterp.sampler import Bottleneck, one_hot_logits, top_k_logits

META = torch.device("meta")


def _prepare_for_tracing(model):
    model.set_attn_implementation("eager")
    model.set_experts_implementation("batched_mm")
    return model.eval()


def ar_meta_model(text_config: dict) -> Gemma4ForCausalLM:
    """Autoregressive Gemma 4 from a text-config dict, on the meta device, ready for depth tracing."""
    config = dict(text_config)
    config.pop("model_type", None)
    with META:
        model = Gemma4ForCausalLM(Gemma4TextConfig(**config))
    return _prepare_for_tracing(model)


def diffusion_meta_model(config: DiffusionGemmaConfig) -> DiffusionGemmaForBlockDiffusion:
    """DiffusionGemma from a config, on the meta device, ready for depth tracing."""
    with META:
        model = DiffusionGemmaForBlockDiffusion(copy.deepcopy(config))
    return _prepare_for_tracing(model)


def ar_token_depth(model: Gemma4ForCausalLM, prompt_len: int = 16) -> DepthReport:
    """Depth of one generated token: a decode step on the prompt's KV cache."""
    device = next(model.parameters()).device
    with torch.no_grad(), DepthTracer(root=model) as tracer:
        prompt = torch.zeros(1, prompt_len, dtype=torch.long, device=device)
        prefill = model(input_ids=prompt, use_cache=True)
        token = prefill.logits[:, -1].argmax(-1, keepdim=True)  # interpretable: resets
        decode = model(input_ids=token, past_key_values=prefill.past_key_values, use_cache=True)
        return tracer.report(decode.logits)


@dataclass
class DiffusionDepths:
    """Per-step depths of a chain of denoising steps on one canvas."""

    bottleneck: str
    canvas_through_acceptance: bool
    step_depths: list[int]  # depth of each step's logits, chained from the first step
    first_step: DepthReport
    last_step: DepthReport

    @property
    def chained(self) -> int:
        return self.step_depths[-1]

    @property
    def per_step(self) -> int:
        """Depth one step adds (its own depth when the chain resets, else the increment)."""
        if len(self.step_depths) < 2:
            return self.step_depths[0]
        return self.step_depths[-1] - self.step_depths[-2]


def diffusion_step_depths(
    model: DiffusionGemmaForBlockDiffusion,
    n_steps: int,
    bottleneck: str = "continuous",
    *,
    prompt_len: int = 16,
    t_max: float = 0.8,
    t_min: float = 0.4,
    entropy_bound: float = 0.1,
    canvas_through_acceptance: bool = False,
) -> DiffusionDepths:
    """Trace ``n_steps`` denoising steps of one canvas and the self-conditioning between them."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1 (got {n_steps})")
    mode = Bottleneck.parse(bottleneck)
    device = next(model.parameters()).device
    canvas_length = model.config.canvas_length
    vocab = model.config.text_config.vocab_size
    positions = torch.arange(prompt_len, prompt_len + canvas_length, device=device).unsqueeze(0)
    depths: list[int] = []
    reports: list[DepthReport] = []
    with torch.no_grad(), DepthTracer(root=model) as tracer:
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        prompt = torch.zeros(1, prompt_len, dtype=torch.long, device=device)
        model.model.encoder(input_ids=prompt, past_key_values=cache, use_cache=True)
        canvas = torch.randint(0, vocab, (1, canvas_length), device=device)
        signal = None
        for step in range(n_steps):
            output = model(
                decoder_input_ids=canvas,
                self_conditioning_logits=signal if mode.feeds_signal else None,
                past_key_values=cache,
                decoder_position_ids=positions,
            )
            report = tracer.report(output.logits)
            depths.append(report.depth)
            reports.append(report)
            temperature = t_min + (t_max - t_min) * (n_steps - step) / n_steps
            processed = output.logits / temperature
            probabilities = processed.softmax(-1)
            sampled = torch.multinomial(probabilities.view(-1, vocab), 1).view(1, canvas_length)
            if canvas_through_acceptance:
                entropy = -(probabilities * processed.log_softmax(-1)).sum(-1)
                ordered, order = torch.sort(entropy, dim=-1)
                accepted_sorted = (ordered.cumsum(-1) - ordered) <= entropy_bound  # the sampler's rule
                accepted = torch.zeros_like(accepted_sorted).scatter(-1, order, accepted_sorted)
                canvas = torch.where(accepted, sampled, canvas)
            else:
                canvas = sampled
            signal = _next_signal(mode, processed, sampled)
    return DiffusionDepths(str(mode), canvas_through_acceptance, depths, reports[0], reports[-1])


def _next_signal(mode: Bottleneck, processed: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor | None:
    if mode.mode == "continuous":
        return processed
    if mode.mode == "argmax":
        return one_hot_logits(processed.argmax(-1), processed)
    if mode.mode == "sample":
        return one_hot_logits(sampled, processed)
    if mode.mode == "topk":
        return top_k_logits(processed, mode.k)
    return None
