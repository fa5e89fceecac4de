"""Opaque serial depth: the calculator for any PyTorch computation and the paper's accounting.

- :mod:`~diffinterp.depth.calculator`: ``serial_depth(fn, *args)`` / ``DepthTracer`` (per-tensor
  depth by the serial-depth rules, resets at interpretable states)
- :mod:`~diffinterp.depth.accounting`: AR Gemma 4 vs DiffusionGemma by self-conditioning signal
  (``diffinterp depth``)
"""

from diffinterp.depth.calculator import DepthReport, DepthTracer, PathStep, serial_depth

__all__ = ["DepthReport", "DepthTracer", "PathStep", "serial_depth"]
