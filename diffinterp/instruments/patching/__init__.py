"""Activation patching, path patching and attribution patching across denoising steps.

A *patch* copies one activation (hook name, block, step, canvas positions) from a **source** run
(usually the clean prompt's, read from its :class:`~diffinterp.records.cache.DenoisingCache`) into a
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

Modules: :mod:`.patches` (what a patch is), :mod:`.metrics`, :mod:`.engine` (the batched runs),
:mod:`.activation` (coupled runs and sweeps), :mod:`.path` (the channels between steps),
:mod:`.attribution` (gradient x activation difference).
"""

from diffinterp.core.sampler import generation_kwargs
from diffinterp.instruments.patching.activation import (
    PatchingResult,
    coupled_runs,
    step_layer_sweep,
    step_position_sweep,
    steps_aligned,
)
from diffinterp.instruments.patching.attribution import AttributionResult, attribution_patching, correlation
from diffinterp.instruments.patching.engine import MODES, repeat_kv_cache, run_patches, run_patches_loop
from diffinterp.instruments.patching.metrics import (
    AnswerProb,
    ExactMatch,
    LogitDiff,
    final_outputs,
    pad_after_eos,
    step_outputs,
)
from diffinterp.instruments.patching.patches import RESID_POST, Patch, position_mask
from diffinterp.instruments.patching.path import CHANNELS, channel_patches, path_patching

__all__ = [
    "CHANNELS",
    "MODES",
    "AnswerProb",
    "AttributionResult",
    "ExactMatch",
    "LogitDiff",
    "Patch",
    "PatchingResult",
    "RESID_POST",
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
    "steps_aligned",
]
