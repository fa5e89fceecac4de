"""The cost of one hook call: diffinterp's caching hook against a hand-written cloning torch hook.

A whole-trajectory benchmark (benchmarks/peers.py) adds a hook's cost once per hook per step,
thousands of times, but on these shared machines its medians swing by more than the few percent
in question. This one times the call itself: one HF module (a decoder layer's
``post_attention_layernorm``, what ``hook_attn_out`` reads) called in a tight loop, interleaved in
rotating order, with

* no hook (the module alone),
* a hand-written ``register_forward_hook`` that stores ``output.detach().clone()`` (the floor),
* a TransformerLens ``HookPoint`` called on the output, with a cloning hook (the peer),
* diffinterp's caching hook on ``decoder.blocks.0.hook_attn_out`` (what ``run_with_cache`` attaches).

It prints each one's median µs per call and the extra cost of each hook over the module alone.

    python benchmarks/hook_call.py [--model carry] [--batch 4] [--calls 20000] [--rounds 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformer_lens.hook_points import HookPoint

import diffinterp as di
from diffinterp.records.cache import DenoisingCache, caching_hooks


def per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="carry")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--calls", type=int, default=20000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians)")
    parser.add_argument("--json", default="out/benchmarks/hook_call.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hm = di.load_model(args.model)
    name = "decoder.blocks.0.hook_attn_out"
    module = hm.model.model.decoder.layers[0].post_attention_layernorm
    x = torch.randn(args.batch, hm.model.config.canvas_length, hm.text_config.hidden_size)
    stored: list[torch.Tensor] = []

    def bare():
        module(x)

    def hand_hook(_module, _args, output):
        stored.append(output.detach().clone())

    def hand():
        module(x)
        stored.clear()

    point = HookPoint()
    point.add_hook(lambda tensor, hook: stored.append(tensor.detach().clone()))

    def lens():
        point(module(x))
        stored.clear()

    cache = DenoisingCache()

    def ours():
        module(x)

    contenders = {"module alone": bare, "hand-written torch hook": hand, "TransformerLens HookPoint": lens}
    times: dict[str, list[float]] = {key: [] for key in [*contenders, "diffinterp caching hook"]}
    with torch.no_grad():
        for round_ in range(args.rounds):
            order = list(contenders)[round_ % 3 :] + list(contenders)[: round_ % 3]
            for key in order:
                handle = module.register_forward_hook(hand_hook) if key == "hand-written torch hook" else None
                try:
                    times[key].append(per_call_us(contenders[key], args.calls))
                finally:
                    if handle is not None:
                        handle.remove()
            with hm.hooks(caching_hooks(cache, [name], None)):
                context = hm.context
                context.stack, context.block, context.step = "decoder", 0, 0  # as the sampler sets it per step
                times["diffinterp caching hook"].append(per_call_us(ours, args.calls))
                context.stack = context.block = context.step = None
    assert torch.equal(cache.get(name, 0, 0), module(x))
    medians = {key: statistics.median(values) for key, values in times.items()}
    floor = medians["module alone"]
    print(f"{args.model}, batch {args.batch}, {args.calls} calls x {args.rounds} rounds, one thread (µs per call):")
    for key, value in medians.items():
        extra = "" if key == "module alone" else f"  (+{value - floor:.2f} over the module)"
        print(f"  {key:28s} {value:7.2f}{extra}")
    hand_extra = medians["hand-written torch hook"] - floor
    ours_extra = medians["diffinterp caching hook"] - floor
    print(f"  diffinterp's hook costs {ours_extra - hand_extra:+.2f} µs per call more than the hand-written one")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "batch": args.batch, "medians_us": medians}, indent=1) + "\n")


if __name__ == "__main__":
    main()
