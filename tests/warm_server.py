"""A Python that has imported the heavy libraries once and forks a new process for each program.

The doc blocks and the CLI tests each need a new process (nothing a test imported, seeded or
attached may leak in), and each spent ~5 s of CPU importing torch, transformers, TransformerLens,
nnsight and matplotlib before its first line ran. This server imports them once, runs no user
code, and for every request forks a child that runs one program (``python SCRIPT`` or
``python -m MODULE``) with its own stdout/stderr files, working directory and argv. The child is
a new process whose interpreter has run nothing but those imports: the same isolation as a fresh
``python``, minus the import time. Python's, numpy's and torch's global generators are reseeded
from the OS in the child, as a fresh interpreter seeds them.

Protocol, one JSON object per line: the client writes ``{"argv", "cwd", "env", "stdout",
"stderr"}`` (``argv`` as for ``python``: ``[SCRIPT, ARGS...]`` or ``["-m", MODULE, ARGS...]``;
``env``: variables to add, e.g. ``PYTHONPATH``, which joins ``sys.path``); the server
answers ``{"pid"}`` once the child is forked and ``{"returncode"}`` when it has exited.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys

PRELOAD = (
    "numpy",
    "torch",
    "transformers",
    "transformers.models.diffusion_gemma.modeling_diffusion_gemma",
    "transformer_lens",
    "nnsight",
    "safetensors.torch",
    "matplotlib.pyplot",
)


def preload() -> None:
    """Import the libraries and every diffinterp module (none of them runs user code on import)."""
    for name in PRELOAD:
        importlib.import_module(name)
    import diffinterp

    for module in pkgutil.walk_packages(diffinterp.__path__, "diffinterp."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def run_child(request: dict) -> int:
    """In the forked child: become ``python ARGV`` in ``cwd`` writing to the given files; its exit status."""
    import atexit
    import random
    import runpy
    import threading
    import traceback

    import numpy
    import torch

    os.chdir(request["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    extra = request.get("env", {})
    os.environ.update(extra)  # read at run time (the preloaded libraries saw the server's environment)
    if extra.get("PYTHONPATH"):
        sys.path[1:1] = extra["PYTHONPATH"].split(os.pathsep)
    random.seed()
    numpy.random.seed()
    torch.seed()
    argv = request["argv"]
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]  # runpy puts the module's path in argv[0], as python -m does
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException as error:  # noqa: BLE001 - what python does with an uncaught exception
        frames = error.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
            frames = frames.tb_next  # the traceback starts at the program, as python's would
        traceback.print_exception(type(error), error, frames)
        code = 1
    threading._shutdown()  # what a fresh interpreter does on its way out: join non-daemon threads,
    atexit._run_exitfuncs()  # then run the exit functions
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed by the program
            pass
    return code


def serve() -> None:
    preload()
    protocol_in, protocol_out = sys.stdin, os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing the server imports may write into the protocol
    protocol_out.write(json.dumps({"ready": True}) + "\n")
    for line in protocol_in:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            protocol_out.close()
            os._exit(run_child(request))
        protocol_out.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        protocol_out.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    serve()
