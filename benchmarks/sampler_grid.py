"""The sampler-settings grid behind a bundled organism's ``generation_config.json``.

Each row of :data:`GRID` is a set of DiffusionGemma sampler settings; every row is scored by exact
match on the **validation** examples (examples 400 to 400 + ``--n`` of each task's held-out split:
``task.test_set(n, offset=400)``), never on the first 400 that ``diffinterp eval`` reports, with
the same sampler seeds as ``diffinterp eval``. The row with the best mean over the organism's tasks
is what its recipe (``catalog.Organism.sampler``) writes into trained folders.

    python benchmarks/sampler_grid.py [--model NAME|PATH] [--n 200] [--json FILE]

About 3 minutes on 2 cores for a bundled organism.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffinterp.core.loading import bundled_model_path, load_model  # noqa: E402
from diffinterp.core.sampler import never_stop_early  # noqa: E402
from diffinterp.organisms import catalog  # noqa: E402
from diffinterp.organisms.evaluate import evaluate_task  # noqa: E402
from diffinterp.organisms.task import DEFAULT_TEST_SIZE  # noqa: E402
from diffinterp.organisms.train import default_generation_config  # noqa: E402

#: (label, settings for ``default_generation_config``); the first row is the shipped default.
GRID: list[tuple[str, dict]] = [
    ("shipped: 32 steps, t 1.0->0.5, bound 0.1, stop 2/0.005", {}),
    (
        "16 steps, t 0.4->0.1, bound 0.5, stop 1/0.005",
        dict(max_denoising_steps=16, t_max=0.4, t_min=0.1, entropy_bound=0.5, stability_threshold=1),
    ),
    (
        "48 steps, t 0.8->0.4, bound 0.1, stop 1/0.005 (HF defaults)",
        dict(max_denoising_steps=48, t_max=0.8, t_min=0.4, stability_threshold=1),
    ),
    (
        "32 steps, t 0.8->0.2, bound 0.2, stop 3/0.001",
        dict(t_max=0.8, t_min=0.2, entropy_bound=0.2, stability_threshold=3, confidence_threshold=0.001),
    ),
    (
        "16 steps, t 0.1->0.01, bound 0.5, stop 1/0.005",
        dict(max_denoising_steps=16, t_max=0.1, t_min=0.01, entropy_bound=0.5, stability_threshold=1),
    ),
    ("32 steps, t 0.4->0.1, bound 0.1, no early stop", dict(t_max=0.4, t_min=0.1, **never_stop_early(32))),
    ("48 steps, t 1.0->0.5, bound 0.05, stop 2/0.005", dict(max_denoising_steps=48, entropy_bound=0.05)),
    ("32 steps, t 1.0->0.7, bound 0.1, stop 3/0.005", dict(t_min=0.7, stability_threshold=3)),
    ("32 steps, t 1.0->0.3, bound 0.1, stop 2/0.005", dict(t_min=0.3)),
]


def validation_set(task: str, n: int) -> list:
    """Examples 400 .. 400 + n of ``task``'s held-out split (disjoint from the reported 400)."""
    return catalog.task(task).test_set(n, offset=DEFAULT_TEST_SIZE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="toy4",
        help="a bundled organism or a DiffusionGemma folder (default toy4, the grid docs/toy4.md shows)",
    )
    parser.add_argument("--n", type=int, default=200, help="validation examples per task")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hm = load_model(args.model)
    model = hm.model
    shipped = model.generation_config
    tasks = tuple(hm.metadata.get("tasks") or ())
    canvas = model.config.canvas_length
    examples = {task: validation_set(task, args.n) for task in tasks}
    rows = []
    print(f"| settings | {' | '.join(tasks)} | mean |\n| --- |{' --- |' * (len(tasks) + 1)}")
    try:
        for label, settings in GRID:
            t0 = time.time()
            model.generation_config = default_generation_config(canvas, **settings)
            acc = {
                task: evaluate_task(model, task, examples=examples[task], batch_size=args.n)["accuracy"]
                for task in tasks
            }
            mean = sum(acc.values()) / len(acc)
            rows.append({"settings": label, **acc, "mean": mean, "seconds": round(time.time() - t0, 1)})
            print(f"| {label} | {' | '.join(f'{acc[t]:.3f}' for t in tasks)} | {mean:.3f} |", flush=True)
    finally:
        model.generation_config = shipped
    best = max(rows, key=lambda r: r["mean"])
    print(f"best mean: {best['settings']} ({best['mean']:.3f})")
    if args.json:
        from diffinterp.records.files import write_json_atomic

        write_json_atomic(
            args.json,
            {"command": "python " + " ".join(sys.argv), "model": str(args.model or bundled_model_path()), "rows": rows},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
