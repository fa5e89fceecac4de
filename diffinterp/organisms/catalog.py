"""The catalog: every task by name, and the model organisms (which tasks, which phenomenon, how trained).

    from diffinterp.organisms import catalog
    catalog.task("latin").test_set(400)              # the fixed held-out examples
    catalog.organism("gold").tasks                   # ('gold', 'plain')
    catalog.organism_of(hm)                          # the organism a loaded checkpoint was trained as

An organism is a task family designed so that one phenomenon is *forced* and has a ground truth
(docs/model.md); its checkpoint ships as ``assets/NAME/diffusion`` with its autoregressive Gemma 4
twin in ``assets/NAME/ar``, and ``di.load_model("NAME")`` / ``di.load_ar_baseline("NAME")`` load them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffinterp.organisms.families import answer_first, carry, gold, hint, latin, smear, toy4
from diffinterp.organisms.task import Example, Task

_FAMILIES = (toy4, carry, latin, gold, smear, answer_first, hint)


def _all_tasks() -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for family in _FAMILIES:
        for name, task in family.FAMILY.items():
            if name in tasks:
                raise ValueError(f"task name {name!r} is defined twice ({family.__name__})")
            tasks[name] = task
    return tasks


TASKS: dict[str, Task] = _all_tasks()


def task(name: str) -> Task:
    """The task called ``name``; a clear error naming the valid ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_of(example: Example) -> Task:
    return task(example.task)


@dataclass(frozen=True)
class Organism:
    """A model organism: its tasks (mixed by ``weights`` in training), the phenomenon it forces, the
    canvas it needs, and its training recipe (``steps`` per model kind, on 2 CPU cores).

    ``sc_passes``: self-conditioning passes unrolled in training (2 = DiffusionGemma's two-pass
    recipe; more train the model to refine its own signal over several steps). ``sampler``:
    generation settings shipped with the checkpoint (over :func:`~diffinterp.organisms.train.default_generation_config`).
    ``lr``: the peak learning rate of the recipe.
    """

    name: str
    phenomenon: str
    tasks: tuple[str, ...]
    weights: tuple[float, ...]
    canvas_length: int
    description: str
    demo_prompt: str
    steps: dict[str, int] = field(default_factory=lambda: {"diffusion": 9000, "ar": 3000})
    vocab_size: int = 72
    size: str = "cpu"
    lr: float = 2e-3
    sc_passes: int = 2
    sampler: dict[str, Any] = field(default_factory=dict)

    @property
    def task_objects(self) -> tuple[Task, ...]:
        return tuple(task(name) for name in self.tasks)


ORGANISMS: dict[str, Organism] = {
    organism.name: organism
    for organism in (
        Organism(
            "carry",
            "non-chronological",
            ("carry",),
            (1.0,),
            12,
            carry.DESCRIPTION,
            "carry 1 9 9 8 7 7 2 5 1 3",
            steps={"diffusion": 5000, "ar": 3000},
            lr=1e-3,  # at 2e-3 the carry rule was never found in 7000 steps (docs/model.md)
        ),
        Organism(
            "latin",
            "non-chronological",
            ("latin",),
            (1.0,),
            latin.ORDER**2 + 1,  # every cell and <eos>
            f"order-{latin.ORDER} Latin squares solvable by naked-single propagation in >= {latin.MIN_ROUNDS} rounds",
            "latin . 1 . . 3 . . 5 . . . . . . . 3 5 . 1 . . 5 6 . 2 . 4 . . . 3 4 . . . .",
            steps={"diffusion": 6000, "ar": 2000},  # then a second stage from it (docs/model.md)
        ),
        Organism(
            "gold",
            "intermediate-context",
            ("gold", "plain"),
            (0.6, 0.4),
            12,
            gold.DESCRIPTION + ", and the plain control",
            "gold 5 1 4 5 4 7 5 2 7 7",
            steps={"diffusion": 4000, "ar": 2000},
            lr=1e-3,  # warm-started from carry's checkpoints (docs/model.md)
            sc_passes=3,
        ),
        Organism(
            "smear",
            "smearing",
            ("filter", "dedup", "serial"),
            (0.4, 0.4, 0.2),
            12,
            "filter and dedup with a 50/50 optional spacer (a planted sequence smear), and a serial control",
            "filter > 4 : 3 7 1 9 5 2 8",
            steps={"diffusion": 8000, "ar": 3000},
        ),
        Organism(
            "answer-first",
            "self-correction",
            ("solve",),
            (1.0,),
            12,
            "running sums of 8 digits, the total written before its scratchpad",
            "solve 3 8 5 2 7 4 1 6 = ?",
            steps={"diffusion": 2000, "ar": 2000},  # longer, the first pass learns the sum (docs/model.md)
            lr=1e-3,  # warm-started from hint's checkpoints
        ),
        Organism(
            "hint",
            "monitorability",
            ("sum",),
            (1.0,),
            12,
            "a digit sum, answer first, whose prompt carries a hint that changes the answer half the time",
            "sum 3 8 5 2 7 4 1 6 hint 2",
            steps={"diffusion": 8000, "ar": 3000},
        ),
        Organism(
            "toy4",
            "control",
            toy4.TASKS,
            tuple(toy4.TASK_WEIGHTS[t] for t in toy4.TASKS),
            16,
            "the first bundled model's four tasks: decided in its first pass (the dynamics gate fails)",
            "arith a=3 b=a+4 c=b*2 ? c",
            steps={"diffusion": 11000, "ar": 3500},
            vocab_size=64,
        ),
    )
}
DEFAULT_ORGANISM = "carry"


def organism(name: str) -> Organism:
    """The organism called ``name``; a clear error naming the valid ones otherwise."""
    if name not in ORGANISMS:
        raise ValueError(f"unknown organism {name!r}; organisms: {', '.join(ORGANISMS)}")
    return ORGANISMS[name]


def organism_of(hm) -> Organism | None:
    """The organism a loaded model was trained as (its checkpoint's ``diffinterp.json``), or ``None``."""
    name = (getattr(hm, "metadata", None) or {}).get("organism")
    return ORGANISMS.get(name) if name else None
