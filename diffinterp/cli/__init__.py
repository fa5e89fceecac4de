"""The ``diffinterp`` command.

diffinterp demo [--model PATH] [--prompt TEXT] [--out DIR]
diffinterp hooks [--config real|tiny|PATH] [--batch B] [--prompt-len T] [--block K]
diffinterp run --prompt TEXT --cache NAMES --out FILE [--model PATH] [--trajectory FILE]
diffinterp lens [--prompt TEXT] [--positions 0-7] [--out DIR]
diffinterp patch --clean TEXT --corrupt TEXT [--sweep step-layer|step-position|path] [--metric logit-diff|prob|exact]
diffinterp depth [--config real|tiny|PATH] [--steps N ...]
diffinterp case-study NAME [--n N] [--quick] [--out DIR]
diffinterp train --model diffusion|ar --out DIR / diffinterp eval --task all

One module per group of commands, each with ``register(subparsers)``; the heavy imports (torch,
transformers) happen inside the commands, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys

from diffinterp.cli import generate, instruments, organisms, structure, studies

COMMAND_GROUPS = (generate, structure, instruments, studies, organisms)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinterp", description="Step-resolved interpretability for DiffusionGemma")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"diffinterp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
