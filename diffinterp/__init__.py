"""diffinterp: step-resolved mechanistic interpretability for DiffusionGemma.

import diffinterp as di
hm = di.load_model()                                  # bundled checkpoint, or an HF folder
traj, cache = hm.run_with_cache(input_ids, names_filter=lambda n: n.endswith("resid_post"))
"""

from diffinterp import depth, lens, patching, probes
from diffinterp.cache import CacheBudgetError, DenoisingCache
from diffinterp.hooks import HookedDiffusionGemma
from diffinterp.model import (
    load_hf_model,
    load_model,
    load_tokenizer,
    meta_model,
    real_config,
    real_generation_config,
    tiny_config,
    tiny_model,
)
from diffinterp.sampler import BOTTLENECK_MODES, Bottleneck
from diffinterp.toy.ar import load_ar_baseline
from diffinterp.trajectory import BlockRecord, StepRecord, Trajectory

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
    "tiny_config",
    "tiny_model",
]
