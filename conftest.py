"""Run every fenced Python block of README.md and docs/*.md (pytest-markdown-docs) in a fresh process.

pytest-markdown-docs collects the blocks (``--markdown-docs`` is in the pytest options) and joins a
``python continuation`` block to the blocks before it; this runner executes that source as a new
``python`` process in an empty temporary directory (so ``out/...`` paths land there, and nothing a
test imported or seeded leaks in), one thread, the non-interactive matplotlib backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pytest_markdown_docs._runners import DefaultRunner, register_runner

TIMEOUT_S = 600


class DocBlockFailed(Exception):
    """A documentation block exited with an error; carries its output."""


@register_runner(default=True)
class FreshProcessRunner(DefaultRunner):
    def runtest(self, test, args, *, asyncio_runner=None):
        with tempfile.TemporaryDirectory(prefix="doc-block-") as tmp:
            name = Path(str(test.source_path)).name.replace(".", "_")
            script = Path(tmp) / f"{name}_line{test.start_line}.py"
            script.write_text(test.source)
            env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
            done = subprocess.run(
                [sys.executable, str(script)], cwd=tmp, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
        if done.returncode != 0:
            raise DocBlockFailed(
                f"{test.source_path}, block at line {test.start_line}: exit status {done.returncode}\n"
                f"--- stderr (last 4000 characters) ---\n{done.stderr[-4000:]}\n--- stdout ---\n{done.stdout[-2000:]}"
            )

    def repr_failure(self, test, excinfo, style=None):
        if isinstance(excinfo.value, DocBlockFailed):
            return str(excinfo.value)
        return super().repr_failure(test, excinfo, style)
