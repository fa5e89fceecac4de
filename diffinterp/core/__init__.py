"""The model layer: loading, hook points and their shapes, the hooked model, the instrumented sampler.

- :mod:`~diffinterp.core.configs`: tiny random configs, the released 26B-A4B structure, meta models
- :mod:`~diffinterp.core.loading`: bundled checkpoints by name and HF folders
- :mod:`~diffinterp.core.hook_points` / :mod:`~diffinterp.core.hook_shapes`: hook points on the
  unmodified HF modules, and the shape each has
- :mod:`~diffinterp.core.hooked`: :class:`HookedDiffusionGemma`
- :mod:`~diffinterp.core.bottleneck`: self-conditioning bottleneck modes
- :mod:`~diffinterp.core.sampler`: the denoising loop, equal to ``generate``
- :mod:`~diffinterp.core.replay`: exact re-runs of any recorded step
"""
