"""Run every fenced Python block of README.md and docs/*.md (pytest-markdown-docs) in a fresh process.

pytest-markdown-docs collects the blocks (``--markdown-docs`` is in the pytest options) and joins a
``python continuation`` block to the blocks before it; this runner executes that source as a new
process in an empty temporary directory (so ``out/...`` paths land there, and nothing a test
imported or seeded leaks in), one thread, the non-interactive matplotlib backend.

The new process is forked from a warm server (``tests/warm_server.py``) that has imported torch,
transformers, TransformerLens, nnsight, matplotlib and diffinterp and run nothing else, so a block
does not pay ~5 s of imports; the CLI tests run ``python -m diffinterp.cli`` through the same
server (fixture ``warm_python``). Each pytest process starts one server, on first use.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pytest_markdown_docs._runners import DefaultRunner, register_runner
from pytest_markdown_docs.plugin import MarkdownInlinePythonItem

TIMEOUT_S = 600
SERVER = Path(__file__).parent / "tests" / "warm_server.py"
# What every program run through the server sees: one thread (the tiny models gain nothing from
# more, and two test workers share two cores), no display, a fixed hash seed.
PROGRAM_ENV = {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


class WarmPython:
    """``python ARGV`` as a forked child of a server that has done the heavy imports once."""

    def __init__(self) -> None:
        self._server: subprocess.Popen | None = None
        self._pending = b""  # bytes read from the server past the last full line

    def _start(self) -> subprocess.Popen:
        server = subprocess.Popen(
            [sys.executable, str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **PROGRAM_ENV},
            text=True,
            start_new_session=True,
        )
        self._pending = b""
        if json.loads(self._read(server, TIMEOUT_S)) != {"ready": True}:
            raise RuntimeError("the warm Python server did not start")
        return server

    def _read(self, server: subprocess.Popen, timeout: float) -> str:
        """One protocol line, waiting at most ``timeout`` seconds. Reads the pipe's file descriptor
        itself (a buffered reader could hold a second line where ``select`` cannot see it)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([server.stdout], [], [], max(left, 0))
            chunk = os.read(server.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise TimeoutError(f"no answer from the warm Python server within {timeout:.0f} s")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def run(self, argv: list[str], *, cwd: str | Path | None = None, env: dict | None = None, timeout=TIMEOUT_S):
        """Run ``python *argv`` in ``cwd``; a ``subprocess.CompletedProcess`` with text stdout/stderr.

        ``env``: variables to add for what the program reads at run time (``PYTHONPATH`` joins
        ``sys.path``); the preloaded libraries were imported under ``PROGRAM_ENV``."""
        if self._server is None or self._server.poll() is not None:
            self._server = self._start()
        with tempfile.TemporaryDirectory(prefix="warm-python-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": [str(a) for a in argv], "cwd": str(Path(cwd or os.getcwd()).resolve()), "env": env or {}}
            self._server.stdin.write(json.dumps({**request, "stdout": str(out), "stderr": str(err)}) + "\n")
            self._server.stdin.flush()
            pid = json.loads(self._read(self._server, 60))["pid"]
            try:
                returncode = json.loads(self._read(self._server, timeout))["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self.close()
                raise subprocess.TimeoutExpired(argv, timeout) from None
            return subprocess.CompletedProcess(
                [sys.executable, *argv], returncode, out.read_text(errors="replace"), err.read_text(errors="replace")
            )

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait()
        self._server = None


_warm_key = pytest.StashKey[WarmPython]()


def pytest_configure(config):
    config.stash[_warm_key] = WarmPython()


def pytest_unconfigure(config):
    config.stash[_warm_key].close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    yield  # the item's setup makes its funcargs, which the runner then receives
    if isinstance(item, MarkdownInlinePythonItem):
        item.funcargs["_warm_python"] = item.config.stash[_warm_key]


@pytest.fixture(scope="session")
def warm_python(pytestconfig) -> WarmPython:
    """Run ``python ARGV`` in a fresh process without paying the heavy imports again."""
    return pytestconfig.stash[_warm_key]


class DocBlockFailed(Exception):
    """A documentation block exited with an error; carries its output."""


@register_runner(default=True)
class FreshProcessRunner(DefaultRunner):
    def runtest(self, test, args, *, asyncio_runner=None):
        warm = args["_warm_python"]
        with tempfile.TemporaryDirectory(prefix="doc-block-") as tmp:
            name = Path(str(test.source_path)).name.replace(".", "_")
            script = Path(tmp) / f"{name}_line{test.start_line}.py"
            script.write_text(test.source)
            done = warm.run([str(script)], cwd=tmp)
        if done.returncode != 0:
            raise DocBlockFailed(
                f"{test.source_path}, block at line {test.start_line}: exit status {done.returncode}\n"
                f"--- stderr (last 4000 characters) ---\n{done.stderr[-4000:]}\n--- stdout ---\n{done.stdout[-2000:]}"
            )

    def repr_failure(self, test, excinfo, style=None):
        if isinstance(excinfo.value, DocBlockFailed):
            return str(excinfo.value)
        return super().repr_failure(test, excinfo, style)
