"""Activation patching across steps: coupled clean/corrupted runs and step x layer / step x position sweeps."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffinterp.core.sampler import never_stop_early
from diffinterp.instruments.patching.engine import run_patches, run_patches_loop
from diffinterp.instruments.patching.metrics import final_outputs, step_outputs
from diffinterp.instruments.patching.patches import RESID_POST, Patch, position_mask
from diffinterp.records.cache import DenoisingCache
from diffinterp.records.trajectory import Trajectory


def coupled_runs(
    hm,
    clean_prompts,
    corrupt_prompts,
    names_filter=None,
    *,
    attention_mask=None,
    corrupt_attention_mask=None,
    seed: int = 0,
    align_steps: bool = True,
    **gen_kwargs,
) -> tuple[Trajectory, DenoisingCache, Trajectory, DenoisingCache]:
    """Clean and corrupted runs that make the same random draws: ``(clean, clean_cache, corrupt, corrupt_cache)``.

    Prompts are strings (tokenised together, so both get the same padded length) or id tensors of
    the same shape. The corrupt run replays the clean run's RNG states, so any difference between
    them comes from the prompts. Seeds torch's global RNG with ``seed`` first. Logits are recorded (``record_logits=True``); ``names_filter``
    chooses the cached activations (default: every layer's ``hook_resid_post``).

    **Aligned step counts.** With adaptive stopping the two runs may stop at different steps (per
    block and per prompt), and a sweep over the steps of one would silently miss the other's. With
    ``align_steps=True`` (default), when the runs' ``active`` masks differ in any block, both are
    generated again with adaptive stopping off (``stability_threshold = max_denoising_steps + 1``,
    every other setting unchanged): each run's first steps are the ones it took before, continued to
    the full step budget. ``align_steps=False`` returns the runs as generated; the sweeps then refuse
    a default step range the two do not share.
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

    def generate(kwargs):
        torch.manual_seed(seed)
        clean, clean_cache = hm.run_with_cache(clean_ids, names, attention_mask=attention_mask, **kwargs)
        corrupt, corrupt_cache = hm.run_with_cache(
            corrupt_ids, names, attention_mask=corrupt_attention_mask, replay=clean, **kwargs
        )
        return clean, clean_cache, corrupt, corrupt_cache

    runs = generate(gen_kwargs)
    if align_steps and not steps_aligned(runs[0], runs[2]):
        budget = int(runs[0].generation["max_denoising_steps"])
        runs = generate({**gen_kwargs, **never_stop_early(budget)})
        if not steps_aligned(runs[0], runs[2]):  # e.g. one run's EOS ended it a canvas earlier
            warnings.warn(
                f"clean and corrupted runs still differ after continuing both to {budget} steps "
                f"(steps per block: clean {runs[0].steps_per_block}, corrupted {runs[2].steps_per_block}, "
                "or rows that stop at different steps): sweep the blocks both ran (block=) and pass steps= explicitly",
                stacklevel=2,
            )
    return runs


def steps_aligned(clean: Trajectory, corrupt: Trajectory) -> bool:
    """Whether two runs took the same steps: the same blocks, and in each the same ``active`` mask
    (every prompt denoising for the same steps)."""
    if clean.steps_per_block != corrupt.steps_per_block:
        return False
    return all(torch.equal(clean.stack("active", b), corrupt.stack("active", b)) for b in range(len(clean.blocks)))


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
    if source is not None and source.block(block).n_steps != n and steps is None:
        raise ValueError(
            f"the clean run took {source.block(block).n_steps} steps in block {block} and the corrupted run {n}: "
            "a sweep over the steps of one would miss the other's. Generate both with pt.coupled_runs "
            "(it aligns step counts; align_steps=True), or with adaptive stopping off "
            "(stability_threshold=max_denoising_steps + 1), or pass steps= explicitly"
        )
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
