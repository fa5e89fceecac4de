"""The cost of one hook call: diffinterp's caching hook against a hand-written cloning torch hook.

A whole-trajectory benchmark (benchmarks/peers.py) adds a hook's cost once per hook per step,
thousands of times, but on these shared machines its medians swing by more than the few percent
in question. This one times the call itself: one HF module (a decoder layer's
``post_attention_layernorm``, what ``hook_attn_out`` reads) called in a tight loop, interleaved in
rotating order, with

* no hook (the module alone),
* a hand-written ``register_forward_hook`` that stores ``output.detach().clone()`` (the floor),
* a TransformerLens ``HookPoint`` called on the output, with a cloning hook (the peer),
* diffinterp's caching tap on ``decoder.blocks.0.hook_attn_out`` (what ``run_with_cache`` attaches),
* a diffinterp user hook there storing into a cache the same way (the path a TransformerLens-style
  hook takes: the wrapper, the replacement check).

It prints each one's median and fastest-round µs per call and the extra cost of each hook over
the module alone (the fastest round is the one no neighbour on a shared machine disturbed).

    python benchmarks/hook_call.py [--model carry] [--batch 4] [--calls 20000] [--rounds 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from transformer_lens.hook_points import HookPoint

import diffinterp as di
from diffinterp.records.cache import DenoisingCache, caching_taps


@contextmanager
def removing(handle):
    try:
        yield
    finally:
        handle.remove()


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

    cache, hooked_cache = DenoisingCache(), DenoisingCache()

    def user_hook(tensor, hook):
        hooked_cache.add(hook.name, hook.step, hook.block, tensor)

    attach = {
        "module alone": nullcontext,
        "hand-written torch hook": lambda: removing(module.register_forward_hook(hand_hook)),
        "TransformerLens HookPoint": nullcontext,
        "diffinterp caching tap": lambda: hm.taps(caching_taps(cache, [name], None, where=hm.context)),
        "diffinterp user hook": lambda: hm.hooks([(name, user_hook)]),
    }
    call = {"module alone": bare, "hand-written torch hook": hand, "TransformerLens HookPoint": lens}
    times: dict[str, list[float]] = {key: [] for key in attach}
    context = hm.context
    with torch.no_grad():
        for round_ in range(args.rounds):
            order = list(attach)[round_ % len(attach) :] + list(attach)[: round_ % len(attach)]
            for key in order:
                with attach[key]():
                    context.stack, context.block, context.step = "decoder", 0, 0  # as the sampler sets it per step
                    times[key].append(per_call_us(call.get(key, bare), args.calls))
                    context.stack = context.block = context.step = None
    assert torch.equal(cache.get(name, 0, 0), module(x)) and torch.equal(hooked_cache.get(name, 0, 0), module(x))
    medians = {key: statistics.median(values) for key, values in times.items()}
    fastest = {key: min(values) for key, values in times.items()}  # the round no neighbour disturbed
    print(f"{args.model}, batch {args.batch}, {args.calls} calls x {args.rounds} rounds, one thread (µs per call):")
    print(f"  {'':28s} {'median':>7s} {'fastest':>8s}")
    for key in times:
        extra = (
            ""
            if key == "module alone"
            else (
                f"  (+{medians[key] - medians['module alone']:.2f} / +{fastest[key] - fastest['module alone']:.2f} over the module)"
            )
        )
        print(f"  {key:28s} {medians[key]:7.2f} {fastest[key]:8.2f}{extra}")
    for key in ("diffinterp caching tap", "diffinterp user hook"):
        by_median = medians[key] - medians["hand-written torch hook"]
        by_fastest = fastest[key] - fastest["hand-written torch hook"]
        print(f"  {key} costs {by_median:+.2f} µs (medians) / {by_fastest:+.2f} µs (fastest rounds) per call "
              "more than the hand-written hook")  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"model": args.model, "batch": args.batch, "medians_us": medians, "fastest_us": fastest}, indent=1)
        + "\n"
    )


if __name__ == "__main__":
    main()
