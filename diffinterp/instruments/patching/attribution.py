"""Attribution patching: one forward and one backward pass over the trajectory (gradient x activation difference)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from diffinterp.core.bottleneck import Bottleneck, apply_bottleneck
from diffinterp.core.sampler import snapshot_cache
from diffinterp.instruments.patching.activation import _layers
from diffinterp.instruments.patching.engine import _generation_config
from diffinterp.instruments.patching.patches import RESID_POST
from diffinterp.records.cache import DenoisingCache
from diffinterp.records.trajectory import Trajectory


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
    cached = set(clean_cache.keys())
    for layer in layers:
        name = hook.format(layer=layer)
        missing = [step.step for step in record.steps if (name, step.step, block) not in cached]
        if missing:
            raise ValueError(
                f"the clean cache has no '{name}' at step {missing[0]} of block {block}, which the corrupted run "
                f"took ({record.n_steps} steps): generate both runs with pt.coupled_runs (it aligns step counts) "
                "and cache this hook at every step"
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
