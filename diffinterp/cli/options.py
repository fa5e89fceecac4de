"""Options and helpers shared by the commands that generate (``--model``, sampler settings, prompts)."""

from __future__ import annotations

import argparse


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="HF DiffusionGemma folder (default: the bundled checkpoint)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (default: checkpoint's)")
    parser.add_argument("--steps", type=int, default=None, help="max denoising steps per canvas")
    parser.add_argument("--bottleneck", default="continuous", help="continuous | argmax | topk:K | sample | none")
    parser.add_argument("--seed", type=int, default=0)


def generation_kwargs(args) -> dict:
    kwargs = {"bottleneck": args.bottleneck}
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.steps is not None:
        kwargs["max_denoising_steps"] = args.steps
    return kwargs


def prompt_ids(hm, prompt: str | None, path=None):
    if hm.tokenizer is None:
        raise SystemExit("this checkpoint has no tokenizer; give a folder with tokenizer files")
    return hm.to_tokens(prompt if prompt is not None else default_prompt(hm, path))


def default_prompt(hm, path=None) -> str:
    """A prompt the checkpoint knows (from its ``diffinterp.json``)."""
    from diffinterp.core.loading import checkpoint_metadata

    return checkpoint_metadata(path).get("demo_prompt", "a=3 b=a+4 c=b*2 ? c")


def decode_text(hm, tokens) -> str:
    from diffinterp.records.decoding import token_labels

    return " ".join(token_labels(tokens, hm.tokenizer))


def parse_positions(spec: str | None, n_pos: int) -> list[int]:
    """``--positions``: comma-separated canvas positions and ranges (``0-3,8``); default the first 8."""
    if spec is None:
        return list(range(min(8, n_pos)))
    positions = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        try:
            positions += list(range(int(low), int(high or low) + 1))
        except ValueError:
            raise ValueError(f"--positions takes numbers and ranges like '0-3,8', got '{spec}'") from None
    bad = [p for p in positions if not 0 <= p < n_pos]
    if bad:
        raise ValueError(f"position {bad[0]} is outside the canvas (positions 0..{n_pos - 1})")
    return positions
