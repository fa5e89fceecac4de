"""diffinterp: step-resolved mechanistic interpretability for DiffusionGemma.

import diffinterp as di
hm = di.load_model()                                  # bundled checkpoint, or an HF folder
traj, cache = hm.run_with_cache(input_ids, names_filter=lambda n: n.endswith("resid_post"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public names and the module each lives in. Imported on first use (PEP 562), so that
# `diffinterp --help` and `import diffinterp.cli` do not pay for torch and transformers.
_EXPORTS = {
    "BOTTLENECK_MODES": "diffinterp.core.bottleneck",
    "Bottleneck": "diffinterp.core.bottleneck",
    "meta_model": "diffinterp.core.configs",
    "real_config": "diffinterp.core.configs",
    "real_generation_config": "diffinterp.core.configs",
    "real_pattern_tiny_config": "diffinterp.core.configs",
    "tiny_config": "diffinterp.core.configs",
    "tiny_model": "diffinterp.core.configs",
    "HookedDiffusionGemma": "diffinterp.core.hooked",
    "load_hf_model": "diffinterp.core.loading",
    "load_model": "diffinterp.core.loading",
    "load_tokenizer": "diffinterp.core.loading",
    "load_ar_baseline": "diffinterp.organisms.twin",
    "CacheBudgetError": "diffinterp.records.cache",
    "DenoisingCache": "diffinterp.records.cache",
    "BlockRecord": "diffinterp.records.trajectory",
    "StepRecord": "diffinterp.records.trajectory",
    "Trajectory": "diffinterp.records.trajectory",
    "active_mean": "diffinterp.records.trajectory",
    "attention_keys": "diffinterp.records.decoding",
}
_SUBMODULES = {
    "depth": "diffinterp.depth",
    "lens": "diffinterp.instruments.lens",
    "patching": "diffinterp.instruments.patching",
    "probes": "diffinterp.instruments.probes",
}

if TYPE_CHECKING:  # static tools see the eager imports
    from diffinterp import depth
    from diffinterp.core.bottleneck import BOTTLENECK_MODES, Bottleneck
    from diffinterp.core.configs import (
        meta_model,
        real_config,
        real_generation_config,
        real_pattern_tiny_config,
        tiny_config,
        tiny_model,
    )
    from diffinterp.core.hooked import HookedDiffusionGemma
    from diffinterp.core.loading import load_hf_model, load_model, load_tokenizer
    from diffinterp.instruments import lens, patching, probes
    from diffinterp.organisms.twin import load_ar_baseline
    from diffinterp.records.cache import CacheBudgetError, DenoisingCache
    from diffinterp.records.decoding import attention_keys
    from diffinterp.records.trajectory import BlockRecord, StepRecord, Trajectory, active_mean


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'diffinterp' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "BOTTLENECK_MODES",
    "BlockRecord",
    "Bottleneck",
    "CacheBudgetError",
    "DenoisingCache",
    "HookedDiffusionGemma",
    "StepRecord",
    "Trajectory",
    "active_mean",
    "attention_keys",
    "depth",
    "lens",
    "load_ar_baseline",
    "load_hf_model",
    "load_model",
    "load_tokenizer",
    "meta_model",
    "patching",
    "probes",
    "real_config",
    "real_generation_config",
    "real_pattern_tiny_config",
    "tiny_config",
    "tiny_model",
]
