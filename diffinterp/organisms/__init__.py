"""Model organisms: task families with ground truth, their tokenizer, and training of the shipped models.

- :mod:`~diffinterp.organisms.task`: tasks (seeded generators, held-out splits, scoring, ground truth)
- :mod:`~diffinterp.organisms.families`: one module per organism's task family
- :mod:`~diffinterp.organisms.catalog`: every task by name, and the organisms (tasks, phenomenon, recipe)
- :mod:`~diffinterp.organisms.tokenizer`: the word-level HF tokenizer of those tasks
- :mod:`~diffinterp.organisms.batches`: examples encoded as prompt ids, canvases, AR sequences
- :mod:`~diffinterp.organisms.train`: DiffusionGemma's objective and the AR twin's, the training loop
- :mod:`~diffinterp.organisms.evaluate`: exact-match evaluation with confidence intervals
- :mod:`~diffinterp.organisms.twin`: ``load_ar_baseline`` (the bundled ``Gemma4ForCausalLM`` twin)
- :mod:`~diffinterp.organisms.checkpoints`: saving checkpoint folders (and random test fixtures)
"""

from diffinterp.organisms.catalog import ORGANISMS, TASKS, organism, organism_of, task
from diffinterp.organisms.task import Example, Task
from diffinterp.organisms.tokenizer import build_tokenizer
from diffinterp.organisms.twin import ARBaseline, bundled_ar_path, bundled_diffusion_path, load_ar_baseline

__all__ = [
    "ARBaseline",
    "Example",
    "ORGANISMS",
    "TASKS",
    "Task",
    "build_tokenizer",
    "bundled_ar_path",
    "bundled_diffusion_path",
    "load_ar_baseline",
    "organism",
    "organism_of",
    "task",
]
