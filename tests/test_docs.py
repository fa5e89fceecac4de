"""The README's showcase prints what the README says it prints.

Every fenced Python block of README.md and docs/*.md runs as a test through pytest-markdown-docs
(conftest.py); this checks the one whose output the README shows, line by line, against a fresh run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_readme_showcase_prints_the_output_it_shows(tmp_path):
    readme = (REPO / "README.md").read_text()
    match = re.search(r"```python\n(.*?)```\n\nIts output, verbatim[^\n]*\n\n```\n(.*?)```", readme, re.S)
    assert match, "README.md: the showcase block and its output block"
    code, shown = match.groups()
    expected = [line.split("  <-")[0].rstrip() for line in shown.strip().splitlines()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines() == expected
    answer = expected[0].split(" <eos>")[0].split()
    digits = [int(d) for d in "1 9 9 8 7 7 2 5 1 3".split()]
    assert answer == [str(sum(digits[i:]) % 10) for i in range(10)]  # the suffix sums: the model is right


def test_every_figure_in_the_docs_has_a_caption():
    """Each image in README.md and docs/ is followed by a paragraph that starts with ``Caption:``."""
    missing = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if not re.search(r"!\[[^\]]*\]\([^)]*\)", line):
                continue
            following = [text for text in lines[index + 1 : index + 4] if text.strip()]
            if not (following and following[0].startswith("Caption:")):
                missing.append(f"{path.relative_to(REPO)}:{index + 1}")
    assert not missing, f"figures without a caption: {missing}"
