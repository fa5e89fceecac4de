"""Options and helpers shared by the commands that generate (``--model``, sampler settings, prompts)."""

from __future__ import annotations

import argparse

BOTTLENECK_HELP = (
    "self-conditioning signal: continuous (the model's own), argmax, topk:K (the paper's: top-K tokens, the "
    "rest spread uniformly; topk:K:renorm renormalises them), topp:P, sample or none"
)
#: Sampler flags and the generation keyword each sets (the entropy bound goes into the sampler config).
SAMPLER_FLAGS = {
    "max_denoising_steps": ("--max-denoising-steps", int, "max denoising steps per canvas (default: the checkpoint's)"),
    "t_max": ("--t-max", float, "temperature at the first step (the schedule falls linearly to --t-min)"),
    "t_min": ("--t-min", float, "temperature at the last step"),
    "entropy_bound": ("--entropy-bound", float, "the entropy-bound sampler's acceptance bound (nats)"),
    "stability_threshold": ("--stability", int, "stop once the argmax canvas is stable for this many steps"),
    "confidence_threshold": ("--confidence", float, "... and its mean entropy is below this (nats)"),
}


#: The smallest valid value of each sampler flag, and whether it must be exceeded.
FLAG_MINIMA = {
    "max_denoising_steps": (1, False),
    "t_max": (0, True),
    "t_min": (0, True),
    "entropy_bound": (0, False),
    "stability_threshold": (0, False),
    "confidence_threshold": (0, True),
}


def add_sampler_args(parser: argparse.ArgumentParser, *, bottleneck_default: str | None = "continuous") -> None:
    """The sampler settings every generating command takes (each defaults to the checkpoint's)."""
    parser.add_argument("--bottleneck", default=bottleneck_default, help=BOTTLENECK_HELP)
    for flag, kind, text in SAMPLER_FLAGS.values():
        parser.add_argument(flag, type=kind, default=None, help=text)


def sampler_kwargs(args) -> dict:
    """Generation keywords from the flags of :func:`add_sampler_args` that were given."""
    kwargs = {} if args.bottleneck is None else {"bottleneck": args.bottleneck}
    if args.bottleneck is not None:
        from diffinterp.records.modes import Bottleneck

        Bottleneck.parse(args.bottleneck)  # a bad mode is named now, before anything loads
    for key in SAMPLER_FLAGS:
        value = getattr(args, key, None)
        if value is None:
            continue
        low, strict = FLAG_MINIMA[key]
        if value < low or (strict and value == low):
            flag = SAMPLER_FLAGS[key][0]
            raise ValueError(f"{flag} must be {'above' if strict else 'at least'} {low}, got {value}")
        if key == "entropy_bound":
            from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

            kwargs["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(value))
        else:
            kwargs[key] = value
    return kwargs


def add_quantize_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize",
        choices=("int8", "int4", "float8"),
        default=None,
        help="load the model with weight-only quantized linear layers (optimum-quanto; docs/real-model.md)",
    )


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a bundled organism or an HF DiffusionGemma folder")
    add_quantize_arg(parser)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (default: checkpoint's)")
    add_sampler_args(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's random draws")


def generation_kwargs(args) -> dict:
    kwargs = sampler_kwargs(args)
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    return kwargs


def prompt_ids(hm, prompt: str | None, path=None):
    if prompt is not None and not prompt.strip():
        raise ValueError("--prompt is empty: give the prompt text, or leave --prompt out for the model's demo prompt")
    if hm.tokenizer is None:
        raise ValueError("this checkpoint has no tokenizer: give a folder with tokenizer files")
    return hm.to_tokens(prompt if prompt is not None else default_prompt(hm, path))


def distinct_outputs(*paths) -> None:
    """Refuse two outputs (or an output and an input) that are the same file: one would overwrite the other."""
    from pathlib import Path

    seen: dict[str, Path] = {}
    for path in paths:
        key = str(Path(path).resolve())
        if key in seen:
            raise ValueError(f"{path} is given twice (as an input or output): the second write would replace the first")
        seen[key] = Path(path)


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
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"--positions takes numbers and ranges like '0-3,8', got '{spec}'") from None
        if last < first:
            raise ValueError(
                f"--positions range '{part.strip()}' runs backwards: write it low-high, e.g. '{last}-{first}'"
            )
        positions += list(range(first, last + 1))
    bad = [p for p in positions if not 0 <= p < n_pos]
    if bad:
        raise ValueError(f"position {bad[0]} is outside the canvas (positions 0..{n_pos - 1})")
    return positions
