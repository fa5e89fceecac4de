"""Decoder passes and wall time of re-running a trajectory's steps, against one plain HF generate.

For a trajectory whose logits were not recorded in float32 (not at all, or as bfloat16), each
step's self-conditioning signal must be re-derived by re-running the earlier steps. diffinterp
keeps the last derived signal per block, so visiting the steps in order re-runs each once; the
"re-derived per call" column clears that memo before every call (what every call cost before it).
Both columns give bit-identical results (checked). Every block is forced to run all S steps.

    python benchmarks/step_reruns.py [--model carry] [--steps 8 16 32] [--batch 2] [--repeats 3] [--threads 1]
                                     [--json out/benchmarks/step_reruns.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import diffinterp as di
from diffinterp.core.loading import checkpoint_metadata
from diffinterp.core.sampler import never_stop_early
from diffinterp.instruments.patching.metrics import final_outputs, final_outputs_and_signals


class PassCounter:
    """Counts decoder forward passes by wrapping ``decoder.forward`` (a torch hook would make
    ``run_step`` treat its logits as possibly edited, and so not reuse them)."""

    def __init__(self, model):
        self.decoder, self.count = model.model.decoder, 0
        original = self.decoder.forward

        def counting(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        self.decoder.forward = counting

    def close(self):
        del self.decoder.forward


def jobs(hm, trajectory, steps: int, memo: bool):
    """The four visits of a whole trajectory the acceptance bar names: name -> function.

    ``memo=False``: the algorithm before the memo, each call deriving its signal from step 0
    (final_outputs was a loop of run_step; the sweep's start states, final_outputs then one
    derivation per start step)."""
    runtime = trajectory.blocks[0].runtime

    def scratch():
        if not memo:
            runtime.signal_memo = None

    def step_inputs(s):
        scratch()
        return hm.step_inputs(trajectory, 0, s)["self_conditioning_logits"]

    def run_step(s):
        scratch()
        return hm.run_step(trajectory, 0, s)

    def finals_by_run_step():
        logits = None
        for step in trajectory.blocks[0].steps:
            here = (step.logits if step.logits is not None else run_step(step.step)).float()
            logits = here.clone() if logits is None else torch.where(step.active[:, None, None], here, logits)
        return logits

    if memo:
        return {
            "final_outputs": lambda: final_outputs(hm, trajectory)[0],
            "step_inputs (every step)": lambda: [step_inputs(s) for s in range(steps)],
            "run_step (every step)": lambda: [run_step(s) for s in range(steps)],
            "sweep start states (every step)": lambda: final_outputs_and_signals(hm, trajectory, 0, range(steps))[2],
        }
    return {
        "final_outputs": finals_by_run_step,
        "step_inputs (every step)": lambda: [step_inputs(s) for s in range(steps)],
        "run_step (every step)": lambda: [run_step(s) for s in range(steps)],
        "sweep start states (every step)": lambda: (finals_by_run_step(), {s: step_inputs(s) for s in range(steps)})[1],
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or a is None:
        return (a is None and b is None) or torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="carry", help="organism or DiffusionGemma folder (default carry)")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32], help="denoising steps S per block")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="out/benchmarks/step_reruns.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hm = di.load_model(args.model)
    prompt = checkpoint_metadata(args.model).get("demo_prompt")
    input_ids, mask = hm.to_tokens([prompt] * args.batch)
    canvas = hm.model.config.canvas_length
    rows = []
    for steps in args.steps:
        kwargs = dict(attention_mask=mask, max_new_tokens=canvas, max_denoising_steps=steps, **never_stop_early(steps))
        for recorded in ("nothing", "bfloat16"):
            extra = {} if recorded == "nothing" else dict(record_logits=True, logits_dtype=torch.bfloat16)
            torch.manual_seed(0)
            trajectory = hm.generate(input_ids, **kwargs, **extra)
            assert trajectory.blocks[0].n_steps == steps
            runtime = trajectory.blocks[0].runtime

            def generate(kwargs=kwargs):
                torch.manual_seed(0)
                hm.model.generate(input_ids, **kwargs)

            times = {"generate": []}
            passes, results = {}, {}
            for round_ in range(args.repeats):
                times["generate"].append(timed(generate))
                for memo in ("kept", "re-derived per call"):
                    for name, job in jobs(hm, trajectory, steps, memo == "kept").items():
                        runtime.signal_memo = None
                        counter = PassCounter(hm.model)
                        try:
                            start = time.perf_counter()
                            result = job()
                            seconds = time.perf_counter() - start
                        finally:
                            counter.close()
                        times.setdefault((name, memo), []).append(seconds)
                        passes[(name, memo)] = counter.count
                        if round_ == 0:
                            results[(name, memo)] = result
            for name in jobs(hm, trajectory, steps, True):
                assert same(results[(name, "kept")], results[(name, "re-derived per call")]), name
                floor = statistics.median(times["generate"])
                rows.append(
                    {
                        "steps": steps,
                        "logits_recorded": recorded,
                        "job": name,
                        "passes": passes[(name, "kept")],
                        "passes_rederived": passes[(name, "re-derived per call")],
                        "seconds": statistics.median(times[(name, "kept")]),
                        "seconds_rederived": statistics.median(times[(name, "re-derived per call")]),
                        "generate_seconds": floor,
                    }
                )
    print("| S | logits recorded | job | passes | passes re-derived per call | × generate | × generate re-derived |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['steps']} | {r['logits_recorded']} | {r['job']} | {r['passes']} | {r['passes_rederived']} | "
            f"{r['seconds'] / r['generate_seconds']:.2f} | {r['seconds_rederived'] / r['generate_seconds']:.2f} |"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "batch": args.batch, "threads": args.threads, "rows": rows}))
    print(f"wrote {out}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
