"""diffinterp, hand-written torch hooks and nnsight on the same full-trajectory cache job, side by side.

Two jobs, each over a whole trajectory (every decoder step of every block), on the same input and
seed, interleaved in rotating order in this one process; the report gives medians and their ratios.

* ``resid_post``: every decoder layer's output (``decoder.blocks.*.hook_resid_post``) at every step.
  diffinterp ``run_with_cache``; hand-written ``register_forward_hook`` on each HF decoder layer,
  storing ``output.detach().clone()``, around ``hm.model.generate``; nnsight ``tracer.cache`` inside
  ``with TransformersModel(...).generate(...)`` (a trace over the model's own ``generate``).
* ``all_hooks``: every decoder hook point a plain torch hook on an HF module can read under HF
  ``generate``: all but ``attn.hook_pattern`` (only the eager attention kernel computes it) and
  ``hook_logits`` (HF generate calls the top-level ``self.forward`` directly, so no module hook on
  it fires); 61 on the 4-layer organisms. diffinterp vs hand-written forward (pre-)hooks on the
  same modules vs nnsight ``tracer.cache`` of the same modules' outputs and inputs.

References: plain ``hm.model.generate`` (no hooks: the floor) and ``hm.generate`` (diffinterp's
instrumented sampler with no hooks attached), so the cost of the sampler's own records and the
cost per hook call can be told apart.

Before timing, every contender's sequences must equal plain generate's, and every tensor the
hand-written hooks and nnsight captured must equal diffinterp's (torch.equal, every (name, step,
block)). The hand-written hooks and diffinterp copy each activation; nnsight's cache keeps the
module's own output tensor (on CPU its ``.to("cpu")`` makes no copy). nnsight instruments every
module of the model it wraps for good, so it wraps its own load of the checkpoint.

    python benchmarks/peers.py [--model carry] [--batch 1 4] [--repeats 5] [--threads N] [--all-steps]
                               [--jobs resid_post all_hooks] [--no-nnsight] [--json out/benchmarks/peers.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from fnmatch import fnmatch
from pathlib import Path

import torch

import diffinterp as di
from diffinterp.core.loading import checkpoint_metadata
from diffinterp.core.sampler import never_stop_early

RESID_POST = "decoder.blocks.*.hook_resid_post"
# diffinterp hook name (inside decoder.blocks.{l}) -> (HF module path inside the layer, what it reads)
_LAYER_HOOKS = {
    "hook_resid_pre": ("", ("input", 0, "hidden_states")),
    "hook_attn_out": ("post_attention_layernorm", ("output",)),
    "hook_resid_mid": ("pre_feedforward_layernorm", ("input", 0, "hidden_states")),
    "hook_mlp_out": ("post_feedforward_layernorm_1", ("output",)),
    "hook_moe_out": ("post_feedforward_layernorm_2", ("output",)),
    "hook_ffn_out": ("post_feedforward_layernorm", ("output",)),
    "hook_resid_post": ("", ("output",)),
    "attn.hook_q": ("self_attn.q_norm", ("output",)),
    "attn.hook_k": ("self_attn.k_norm", ("output",)),
    "attn.hook_v": ("self_attn.v_norm", ("output",)),
    "attn.hook_z": ("self_attn.o_proj", ("input", 0, "input")),
    "moe.hook_router_probs": ("router", ("item", 0)),
    "moe.hook_topk_weights": ("router", ("item", 1)),
    "moe.hook_topk_idx": ("router", ("item", 2)),
}
_STACK_HOOKS = {
    "decoder.hook_embed": ("model.decoder.embed_tokens", ("output",)),
    "decoder.sc.hook_soft_embed": ("model.decoder.self_conditioning", ("input", 1, "self_conditioning_signal")),
    "decoder.sc.hook_signal": ("model.decoder.self_conditioning.down_proj", ("output",)),
    "decoder.sc.hook_out": ("model.decoder.self_conditioning", ("output",)),
    "decoder.ln_final.hook_normalized": ("model.decoder.norm", ("output",)),
}
# Acceptance bars: diffinterp's median over the hand-written hooks' median, per job.
BARS = {"resid_post": 1.02, "all_hooks": 1.05}
# No plain torch hook reads these under HF generate (see the module docstring).
UNREACHABLE = ("*.attn.hook_pattern", "decoder.hook_logits")


def hf_site(name: str) -> tuple[str, tuple]:
    """The HF module (path in the top-level model) and the value of it a diffinterp decoder hook reads."""
    if name in _STACK_HOOKS:
        return _STACK_HOOKS[name]
    prefix = "decoder.blocks."
    layer, _, hook = name[len(prefix) :].partition(".")
    if not name.startswith(prefix) or hook not in _LAYER_HOOKS:
        raise KeyError(f"no plain torch hook reads '{name}'")
    path, read = _LAYER_HOOKS[hook]
    return ".".join(p for p in ("model.decoder.layers", layer, path) if p), read


def pick(read: tuple, args, kwargs, output):
    """The value ``read`` names, from a module call's inputs or output."""
    if read[0] == "output":
        return output
    if read[0] == "item":
        return output[read[1]]
    _, index, kwarg = read
    return kwargs[kwarg] if kwarg in kwargs else args[index]


def torch_hooks_job(model, names: list[str], input_ids, kwargs):
    """Hand-written: cloning forward (pre-)hooks on the HF modules, around plain generate; removed after."""
    store = {name: [] for name in names}
    handles = []
    for name in names:
        path, read = hf_site(name)
        module = model.get_submodule(path)
        out = store[name]
        if read[0] == "input":
            _, index, kwarg = read

            def pre_hook(_module, args, kw, out=out, index=index, kwarg=kwarg):
                out.append((kw[kwarg] if kwarg in kw else args[index]).detach().clone())

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        elif read[0] == "output":

            def hook(_module, _args, output, out=out):
                out.append(output.detach().clone())

            handles.append(module.register_forward_hook(hook))
        else:

            def hook(_module, _args, output, out=out, read=read):
                out.append(pick(read, (), {}, output).detach().clone())

            handles.append(module.register_forward_hook(hook))
    try:
        torch.manual_seed(0)
        result = model.generate(input_ids, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return result.sequences, store


def nnsight_job(lm, names: list[str], input_ids, kwargs):
    """nnsight: a trace over the model's generate, caching the same modules' outputs (and inputs)."""
    sites = {name: hf_site(name) for name in names}
    out_paths = sorted({_envoy_path(p) for p, read in sites.values() if read[0] != "input"})
    in_paths = sorted({_envoy_path(p) for p, read in sites.values() if read[0] == "input"})
    torch.manual_seed(0)
    with lm.generate(input_ids, **kwargs) as tracer:
        outputs = tracer.cache(modules=out_paths)
        inputs = tracer.cache(modules=in_paths, include_output=False, include_inputs=True)
        result = tracer.result.save()
    return result.sequences, (sites, outputs, inputs)


def _envoy_path(path: str) -> str:
    return "model" + (f".{path}" if path else "")


def nnsight_tensors(captured, name: str) -> list[torch.Tensor]:
    sites, outputs, inputs = captured
    path, read = sites[name]
    if read[0] == "input":
        return [pick(read, *entry.inputs, None) for entry in inputs._cache.entries[_envoy_path(path)]]
    return [pick(read, (), {}, entry.output) for entry in outputs._cache.entries[_envoy_path(path)]]


def check_same(cache, names: list[str], tensors_of, who: str) -> int:
    """Every captured tensor equals diffinterp's, in (block, step) order; the number compared."""
    compared = 0
    for name in names:
        keys = sorted((k for k in cache.keys() if k[0] == name), key=lambda k: (k[2], k[1]))
        captured = tensors_of(name)
        assert len(captured) == len(keys), f"{who} captured {len(captured)} of '{name}', diffinterp {len(keys)}"
        for key, tensor in zip(keys, captured, strict=True):
            expected = cache.get(*key)
            assert torch.equal(tensor.reshape(expected.shape), expected), f"{who} differs from diffinterp at {key}"
            compared += 1
    return compared


def timed(fn) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build_contenders(hm, lm, batch: int, *, model: str, all_steps: bool, jobs: list[str]) -> tuple[dict, dict, dict]:
    """The contenders of each job on one batch, checked first: every contender's sequences equal
    plain generate's and every tensor captured equals diffinterp's.

    Returns ``(contenders, checks, info)``: name -> zero-argument callable (``hf_generate``,
    ``diffinterp_no_hooks``, ``{job}/{diffinterp,torch_hooks,nnsight}``), the number of tensors
    compared per ``{job}/{peer}``, and per job its hook and cache sizes.
    """
    prompt = checkpoint_metadata(model).get("demo_prompt", "a=3 b=a+4 ? b")
    input_ids, mask = hm.to_tokens([prompt] * batch)
    kwargs = {"attention_mask": mask}
    if all_steps:
        kwargs.update(never_stop_early(hm.model.generation_config.max_denoising_steps))
    job_names = {
        "resid_post": hm.resolve_names(RESID_POST),
        "all_hooks": [n for n in hm.resolve_names("decoder.*") if not any(fnmatch(n, u) for u in UNREACHABLE)],
    }

    def hf_generate():
        torch.manual_seed(0)
        return hm.model.generate(input_ids, **kwargs).sequences

    def replay():
        torch.manual_seed(0)
        return hm.generate(input_ids, **kwargs).sequences

    contenders = {"hf_generate": hf_generate, "diffinterp_no_hooks": replay}
    reference = hf_generate()
    assert torch.equal(replay(), reference)
    checks, info = {}, {}
    for job in jobs:
        names = job_names[job]

        def diffinterp(names=names):
            torch.manual_seed(0)
            return hm.run_with_cache(input_ids, names_filter=names, **kwargs)

        def hand(names=names):
            return torch_hooks_job(hm.model, names, input_ids, kwargs)

        trajectory, cache = diffinterp()
        assert torch.equal(trajectory.sequences, reference)
        sequences, store = hand()
        assert torch.equal(sequences, reference)
        checks[f"{job}/torch_hooks"] = check_same(cache, names, store.__getitem__, "torch hooks")
        contenders[f"{job}/diffinterp"] = diffinterp
        contenders[f"{job}/torch_hooks"] = hand
        if lm is not None:

            def nnsight(names=names):
                return nnsight_job(lm, names, input_ids, kwargs)

            sequences, captured = nnsight()
            assert torch.equal(sequences, reference)
            checks[f"{job}/nnsight"] = check_same(cache, names, lambda n, c=captured: nnsight_tensors(c, n), "nnsight")
            contenders[f"{job}/nnsight"] = nnsight
        info[job] = {
            "hooks_per_step": len(names),
            "cache_entries": len(cache),
            "cache_bytes": cache.nbytes,
            "steps_per_block": trajectory.steps_per_block,
        }
        del trajectory, cache, store

    return contenders, checks, info


def run_batch(hm, lm, args, batch: int) -> dict:
    contenders, checks, info = build_contenders(
        hm, lm, batch, model=args.model, all_steps=args.all_steps, jobs=args.jobs
    )
    runs = {name: [] for name in contenders}
    order = list(contenders)
    for repeat in range(args.repeats):
        shift = repeat % len(order)
        for name in order[shift:] + order[:shift]:  # rotate so no one always runs first
            runs[name].append(timed(contenders[name]))
    medians = {name: statistics.median(times) for name, times in runs.items()}
    ratios = {}
    for job in args.jobs:
        floor = f"{job}/torch_hooks"
        for name in contenders:
            if name.startswith(f"{job}/"):
                ratios[name] = {
                    "vs_torch_hooks": medians[name] / medians[floor],
                    "vs_hf_generate": medians[name] / medians["hf_generate"],
                    # the median of each round's own ratio: load that drifts between rounds cancels
                    "paired_vs_torch_hooks": statistics.median(
                        a / b for a, b in zip(runs[name], runs[floor], strict=True)
                    ),
                    # the fastest run of each: what the job costs when no neighbour steals the core
                    "best_vs_torch_hooks": min(runs[name]) / min(runs[floor]),
                }
    ratios["diffinterp_no_hooks"] = {"vs_hf_generate": medians["diffinterp_no_hooks"] / medians["hf_generate"]}
    return {
        "batch": batch,
        "jobs": info,
        "tensors_checked_equal": checks,
        "median_seconds": medians,
        "all_seconds": runs,
        "ratios": ratios,
    }


def report(result: dict, repeats: int) -> None:
    medians, ratios = result["median_seconds"], result["ratios"]
    print(f"\n== batch {result['batch']} (medians of {repeats} interleaved runs)")
    hf = medians["hf_generate"]
    print(f"{'hf_generate':<24} {hf * 1000:8.1f} ms")
    print(
        f"{'diffinterp_no_hooks':<24} {medians['diffinterp_no_hooks'] * 1000:8.1f} ms   x{ratios['diffinterp_no_hooks']['vs_hf_generate']:.3f} hf_generate"
    )
    for job, info in result["jobs"].items():
        print(
            f"-- {job}: {info['hooks_per_step']} hooks per step, steps per block {info['steps_per_block']}, "
            f"{info['cache_entries']} tensors, {info['cache_bytes'] / 2**20:.1f} MiB"
        )
        for name in ("torch_hooks", "diffinterp", "nnsight"):
            key = f"{job}/{name}"
            if key in medians:
                r = ratios[key]
                print(
                    f"   {name:<21} {medians[key] * 1000:8.1f} ms   x{r['vs_torch_hooks']:.3f} torch_hooks "
                    f"(paired x{r['paired_vs_torch_hooks']:.3f}, best x{r['best_vs_torch_hooks']:.3f})   "
                    f"x{r['vs_hf_generate']:.3f} hf_generate"
                )
        key = f"{job}/diffinterp"
        if job in BARS and key in ratios:
            r = ratios[key]
            shown = {k: r[f"{k}vs_torch_hooks"] for k in ("", "paired_", "best_")}
            verdict = "met" if all(v <= BARS[job] for v in shown.values()) else "MISSED"
            print(
                f"   bar: diffinterp within {BARS[job]:.2f}x of torch_hooks by median, paired and best: {verdict} "
                f"(x{shown['']:.3f}, x{shown['paired_']:.3f}, x{shown['best_']:.3f})"
            )
    checked = ", ".join(f"{k} {v}" for k, v in result["tensors_checked_equal"].items())
    print(f"   tensors equal to diffinterp's: {checked}")


def nnsight_model(model: str, hm):
    """nnsight's wrapper of its own load of the checkpoint, and nnsight's version."""
    import nnsight
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(hf_logging.CRITICAL)  # the pipeline logs an error listing every class it knows
    try:
        # A second load, not a deepcopy: a copy's freshly aligned weights take other SIMD
        # reduction paths, so its activations differ from the original's in the last bits.
        own = di.load_model(model).model
        lm = nnsight.TransformersModel(own, tokenizer=hm.tokenizer, task="text-generation")
    finally:
        hf_logging.set_verbosity(verbosity)
    return lm, nnsight.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="carry", help="organism or DiffusionGemma folder (default carry)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", nargs="+", choices=["resid_post", "all_hooks"], default=["resid_post", "all_hooks"])
    parser.add_argument("--no-nnsight", action="store_true", help="leave nnsight out")
    parser.add_argument(
        "--all-steps",
        action="store_true",
        help="disable adaptive stopping: every block runs max_denoising_steps (a longer trajectory)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default="out/benchmarks/peers.json")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (medians of fewer runs are too noisy)")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hm = di.load_model(args.model)
    lm = version = None
    if not args.no_nnsight:
        lm, version = nnsight_model(args.model, hm)
        print(f"nnsight {version}: with TransformersModel(...).generate(...) as tracer: tracer.cache(modules=...)")
    results = []
    for batch in args.batch:
        results.append(run_batch(hm, lm, args, batch))
        report(results[-1], args.repeats)
    out = {
        "model": str(args.model),
        "all_steps": args.all_steps,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "nnsight": version,
        "batches": results,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
