"""The ``diffinterp`` command.

diffinterp demo [--model PATH] [--prompt TEXT] [--out DIR]
diffinterp hooks [--config real|tiny|PATH] [--batch B] [--prompt-len T] [--block K]
diffinterp run --prompt TEXT --cache NAMES --out FILE [--model PATH] [--trajectory FILE]
diffinterp lens [--prompt TEXT] [--positions 0-7] [--out DIR]
diffinterp patch --clean TEXT --corrupt TEXT [--sweep step-layer|step-position|path] [--metric logit-diff|prob|exact]
diffinterp depth [--config real|tiny|PATH] [--chain-lengths N ...]
diffinterp view TRAJECTORY [--cache CACHE] [--patching patching.json] [--model NAME|PATH] [--out view.html]
diffinterp case-study NAME [--n N] [--quick] [--out DIR]
diffinterp train --model diffusion|ar --out DIR / diffinterp eval --task all
diffinterp sae train --hook NAME [--steps 0-7] [--k K] [--width W] --out DIR / diffinterp sae eval DIR

One module per group of commands, each with ``register(subparsers)``; the heavy imports (torch,
transformers) happen inside the commands, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys

from diffinterp.cli import generate, instruments, organisms, saes, structure, studies, view

COMMAND_GROUPS = (generate, structure, instruments, view, studies, organisms, saes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinterp", description="Step-resolved interpretability for DiffusionGemma")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    parser.set_defaults(_commands=commands)
    return parser


#: The errors a command reports as ``diffinterp CMD: error: ...`` (exit 2) instead of a traceback: bad
#: values, missing or unreadable files, refused runs (memory, concurrent use), interrupted reads.
USER_ERRORS = (ValueError, KeyError, TypeError, IndexError, OSError, MemoryError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches for the network: local folders only
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the error names the command like every other one
        args._commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"diffinterp {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffinterp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
