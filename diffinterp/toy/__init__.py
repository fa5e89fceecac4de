"""Synthetic tasks, tokenizer and training of the bundled toy models.

- :mod:`~diffinterp.toy.tasks`: the four task families (seeded generators, held-out splits, scoring)
- :mod:`~diffinterp.toy.tokenizer`: the word-level HF tokenizer of those tasks
- :mod:`~diffinterp.toy.train`: DiffusionGemma's objective and the AR twin's, the training loop
- :mod:`~diffinterp.toy.evaluate`: exact-match evaluation with confidence intervals
- :mod:`~diffinterp.toy.ar`: ``load_ar_baseline`` (the bundled ``Gemma4ForCausalLM`` twin)
- :mod:`~diffinterp.toy.commands`: the ``train`` and ``eval`` subcommands
"""

from diffinterp.toy.ar import ARBaseline, bundled_ar_path, bundled_diffusion_path, load_ar_baseline
from diffinterp.toy.tasks import TASKS, Example, test_set
from diffinterp.toy.tokenizer import build_tokenizer

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
