"""diffinterp: step-resolved mechanistic interpretability for DiffusionGemma.

import diffinterp as di
hm = di.load_model()                                  # bundled checkpoint, or an HF folder
traj, cache = hm.run_with_cache(input_ids, names_filter=lambda n: n.endswith("resid_post"))
"""

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
from diffinterp.records.trajectory import BlockRecord, StepRecord, Trajectory

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
