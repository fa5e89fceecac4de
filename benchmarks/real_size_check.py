"""Real-size check: the released DiffusionGemma 26B-A4B structure, random weights, on one GPU.

The test suite proves exactness and hook semantics on tiny configs; this script checks the same
properties at the real size (30 layers, d_model 2816, 128 experts, 262k vocabulary, 256-token
canvas), where memory, kernels (bf16, fused attention, grouped experts) and shapes are the real
ones, and runs every case study's quick version on it. No weights are needed: the structure is
what matters for these checks, and random weights make the sampler run all its steps.

    python benchmarks/real_size_check.py --out OUT            # on a GPU with >= 80 GB (bf16: ~52 GB of weights)
    python benchmarks/real_size_check.py --config tiny --out OUT --device cpu   # dry run of the script

Writes ``OUT/real_size_check.json``: one entry per check (passed / value / seconds / error), the
peak GPU memory, and the case studies' summaries. A failing check is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

import diffinterp as di
from diffinterp.core.configs import real_pattern_tiny_config

PROMPT_LEN, BATCH = 24, 2


def build(config_name: str, device: str, dtype: torch.dtype):
    from transformers import DiffusionGemmaForBlockDiffusion

    config = di.real_config() if config_name == "real" else real_pattern_tiny_config()
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate in the target dtype: fp32 init would need 2x the memory
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = DiffusionGemmaForBlockDiffusion(config)
    finally:
        torch.set_default_dtype(default)
    if config_name == "real":
        model.generation_config = di.real_generation_config()
    return model.eval()


def prompts(vocab: int, device: str):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, vocab, (BATCH, PROMPT_LEN), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, :6], mask[1, :6] = 0, 0  # left padding: prompts of different lengths
    return ids.to(device), mask.to(device)


class Checks:
    """Runs named checks, recording value, time and any error; never stops the script. After each
    check the report so far is rewritten to ``path``, so a run cut short still leaves its results."""

    def __init__(self, path: Path, header: dict):
        self.path, self.header = path, header
        self.results: dict[str, dict] = {}

    def write(self, **extra) -> None:
        report = {**self.header, **extra, "checks": self.results}
        if torch.cuda.is_available():
            report["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        self.path.write_text(json.dumps(report, indent=2, default=str))

    def run(self, name: str, fn):
        start = time.perf_counter()
        try:
            value = fn()
            entry = {"passed": bool(value.pop("passed", True)) if isinstance(value, dict) else True, "value": value}
        except Exception as error:  # noqa: BLE001 - the point is to record every failure and go on
            entry = {
                "passed": False,
                "error": f"{type(error).__name__}: {error}",
                "trace": traceback.format_exc()[-3000:],
            }
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.results[name] = entry
        status = "ok" if entry["passed"] else "FAILED"
        print(f"[{status}] {name} ({entry['seconds']} s) {entry.get('value', entry.get('error'))}"[:600], flush=True)
        self.write()
        return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-denoising-steps", type=int, default=8, help="max denoising steps per run")
    parser.add_argument("--out", required=True, help="folder for real_size_check.json")
    parser.add_argument("--studies-out", default=None, help="folder for the case studies' outputs (default: OUT)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    studies_out = Path(args.studies_out) if args.studies_out else out
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    start = time.perf_counter()
    model = build(args.config, args.device, dtype)
    checks = Checks(out / "real_size_check.json", {
        "config": args.config,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - start, 1),
        "steps": args.max_denoising_steps,
    })  # fmt: skip
    hm = di.HookedDiffusionGemma(model)
    text = model.config.text_config
    canvas = model.config.canvas_length
    ids, mask = prompts(text.vocab_size, args.device)
    gen = dict(attention_mask=mask, max_new_tokens=canvas, max_denoising_steps=args.max_denoising_steps)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        return result, time.perf_counter() - t0

    def exact_generate():
        torch.manual_seed(0)
        model.generate(input_ids=ids, **gen)  # warm-up (kernels, allocator)
        torch.manual_seed(0)
        reference, hf_s = timed(lambda: model.generate(input_ids=ids, **gen))
        torch.manual_seed(0)
        trajectory, hm_s = timed(lambda: hm.generate(ids, **gen))
        equal = torch.equal(reference.sequences, trajectory.sequences)
        return {"passed": equal, "sequences_equal": equal, "steps": trajectory.steps_per_block,
                "hf_generate_s": round(hf_s, 3), "hm_generate_s": round(hm_s, 3), "ratio": round(hm_s / hf_s, 3)}  # fmt: skip

    def cache_shapes():
        decoder = [
            "decoder.blocks.0.hook_resid_post", f"decoder.blocks.{text.num_hidden_layers - 1}.hook_resid_post",
            "decoder.blocks.3.moe.hook_router_probs", "decoder.blocks.5.attn.hook_pattern", "decoder.hook_logits",
        ]  # fmt: skip
        encoder = ["encoder.blocks.0.hook_resid_post", "encoder.blocks.5.attn.hook_pattern"]
        shapes, wrong, estimate, actual = {}, [], 0, 0
        # a steps filter skips encoder passes (they have no step), so the encoder is cached separately
        for names, steps in ((decoder, [0, 1]), (encoder, None)):
            estimate += hm.estimate_cache_bytes(ids, names, steps=steps, **gen)
            torch.manual_seed(0)
            _, cache = hm.run_with_cache(ids, names, steps=steps, **gen)
            actual += cache.nbytes
            for name in names:
                tensor = cache.get(name, None if name.startswith("encoder") else 0, 0)
                expected = list(hm.hook_shape(name, batch=BATCH, prompt_len=PROMPT_LEN, block=0))
                shapes[name] = list(tensor.shape)
                if list(tensor.shape) != expected:
                    wrong.append(f"{name}: {list(tensor.shape)} != {expected}")
        return {"passed": not wrong and actual <= estimate, "shapes": shapes, "mismatches": wrong,
                "estimate_bytes": estimate, "actual_bytes": actual}  # fmt: skip

    def step_rerun():
        torch.manual_seed(0)
        trajectory = hm.generate(ids, record_logits=True, **gen)
        diffs = {}
        for step in sorted({0, 1, trajectory.steps_per_block[0] - 1}):
            kwargs = hm.step_inputs(trajectory, block=0, step=step)
            with torch.no_grad():
                logits = model(**kwargs).logits
            recorded = trajectory.step(0, step).logits.to(logits.device)
            diffs[step] = {"equal": torch.equal(logits.to(recorded.dtype), recorded),
                           "max_abs_diff": float((logits.float() - recorded.float()).abs().max())}  # fmt: skip
        return {"passed": all(d["equal"] for d in diffs.values()), "per_step": diffs}

    def ablation_vs_torch_hook():
        layer, step = text.num_hidden_layers // 2, 2
        torch.manual_seed(0)
        ablated = hm.run_with_hooks(
            ids, fwd_hooks=[(f"decoder.blocks.{layer}.hook_attn_out", lambda t, hook: torch.zeros_like(t))],
            steps=[step], record_logits=True, **gen,
        )  # fmt: skip
        calls = {"n": -1}
        counter = model.model.decoder.register_forward_pre_hook(lambda *a, **k: calls.__setitem__("n", calls["n"] + 1))
        module = model.model.decoder.layers[layer].post_attention_layernorm
        handle = module.register_forward_hook(lambda _m, _i, o: torch.zeros_like(o) if calls["n"] == step else None)
        try:
            torch.manual_seed(0)
            reference = hm.generate(ids, record_logits=True, **gen)
        finally:
            handle.remove()
            counter.remove()
        same = torch.equal(ablated.sequences, reference.sequences) and all(
            torch.equal(a.logits, b.logits) for a, b in zip(ablated.steps[0], reference.steps[0], strict=True)
        )
        return {"passed": same, "layer": layer, "step": step}

    def no_hooks_left():
        hooked = [name for name, module in model.named_modules() if module._forward_hooks or module._forward_pre_hooks]
        return {"passed": not hooked, "modules_with_hooks": hooked[:10]}

    checks.run("generate_equals_hf_generate", exact_generate)
    checks.run("run_with_cache_shapes", cache_shapes)
    checks.run("step_inputs_rerun_reproduces_logits", step_rerun)
    checks.run("zero_ablation_equals_plain_torch_hook", ablation_vs_torch_hook)
    checks.run("no_hooks_left", no_hooks_left)

    from diffinterp.studies.registry import load_study

    # monitorability fits its logistic monitors on (position, token) one-hots: with a 262k
    # vocabulary and 256 positions, a small training set keeps that fit to seconds
    extra = {"monitorability": {"n_train": 20}}
    for name in ("self-correction", "smearing", "non-chronological", "intermediate-context", "monitorability"):
        run = load_study(name).run
        folder, options = studies_out / name, extra.get(name, {})

        def study(run=run, folder=folder, options=options):
            torch.manual_seed(0)
            metrics = run(hm, n=2, out_dir=folder, quick=True, max_denoising_steps=4, **options)
            return {"summary": metrics.get("summary"), "notes": metrics.get("notes")}

        checks.run(f"case_study_{name}", study)
    checks.run("no_hooks_left_after_studies", no_hooks_left)

    checks.write(total_seconds=round(time.perf_counter() - start, 1))
    failed = [name for name, entry in checks.results.items() if not entry["passed"]]
    print(f"{len(checks.results) - len(failed)}/{len(checks.results)} checks passed; failed: {failed or 'none'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
