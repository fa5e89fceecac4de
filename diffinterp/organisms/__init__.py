"""Model organisms: task families with ground truth, their tokenizer, and training of the shipped models.

- :mod:`~diffinterp.organisms.tasks`: the task families (seeded generators, held-out splits, scoring)
- :mod:`~diffinterp.organisms.tokenizer`: the word-level HF tokenizer of those tasks
- :mod:`~diffinterp.organisms.batches`: examples encoded as prompt ids, canvases, AR sequences
- :mod:`~diffinterp.organisms.train`: DiffusionGemma's objective and the AR twin's, the training loop
- :mod:`~diffinterp.organisms.evaluate`: exact-match evaluation with confidence intervals
- :mod:`~diffinterp.organisms.twin`: ``load_ar_baseline`` (the bundled ``Gemma4ForCausalLM`` twin)
- :mod:`~diffinterp.organisms.checkpoints`: saving checkpoint folders (and random test fixtures)
"""

from diffinterp.organisms.tasks import TASKS, Example, test_set
from diffinterp.organisms.tokenizer import build_tokenizer
from diffinterp.organisms.twin import ARBaseline, bundled_ar_path, bundled_diffusion_path, load_ar_baseline

__all__ = [
    "ARBaseline",
    "Example",
    "TASKS",
    "build_tokenizer",
    "bundled_ar_path",
    "bundled_diffusion_path",
    "load_ar_baseline",
    "test_set",
]
