"""Path patching through the channels between denoising steps (self-conditioning vs canvas tokens)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from diffinterp.core.sampler import generation_kwargs
from diffinterp.instruments.patching.activation import PatchingResult, _sweep
from diffinterp.instruments.patching.patches import Patch
from diffinterp.records.cache import DenoisingCache
from diffinterp.records.trajectory import Trajectory

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
