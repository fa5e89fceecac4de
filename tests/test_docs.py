"""The README's showcase prints what the README says it prints.

Every fenced Python block of README.md and docs/*.md runs as a test through pytest-markdown-docs
(conftest.py); this checks the one whose output the README shows, line by line, against a fresh run.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_readme_showcase_prints_the_output_it_shows(tmp_path, warm_python):
    readme = (REPO / "README.md").read_text()
    match = re.search(r"```python\n(.*?)```\n\nIts output, verbatim[^\n]*\n\n```\n(.*?)```", readme, re.S)
    assert match, "README.md: the showcase block and its output block"
    code, shown = match.groups()
    expected = [line.split("  <-")[0].rstrip() for line in shown.strip().splitlines()]
    (tmp_path / "showcase.py").write_text(code)
    done = warm_python.run([str(tmp_path / "showcase.py")], cwd=tmp_path)
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


def test_programs_run_through_the_warm_server_share_nothing(tmp_path, warm_python):
    """Doc blocks and CLI tests run as forked children of one server: each must start as a fresh
    interpreter would (no module state, seeds or files of the program before it; a failure's exit
    status and traceback come back)."""
    first = tmp_path / "first.py"
    first.write_text(
        "import json, os, random, torch\njson.LEFT_BEHIND = 1\ntorch.manual_seed(5)\nopen('here.txt', 'w').write('x')\n"
        "print(os.getpid(), random.random(), torch.initial_seed())\n"
    )
    second = tmp_path / "second.py"
    second.write_text(
        "import json, os, random, sys, torch\nprint(os.getpid(), random.random(), torch.initial_seed())\n"
        "print(hasattr(json, 'LEFT_BEHIND'), os.path.exists('here.txt'), sys.argv[1:])\n"
        "raise SystemExit(3)\n"
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = warm_python.run([str(first)], cwd=tmp_path / "a")
    two = warm_python.run([str(second), "--flag"], cwd=tmp_path / "b")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 3
    first_state, second_state = one.stdout.split(), two.stdout.splitlines()[0].split()
    # new pid; Python's and torch's generators seeded afresh (not torch.manual_seed(5), not the server's)
    assert all(a != b for a, b in zip(first_state, second_state, strict=True)) and second_state[2] != "5"
    assert two.stdout.splitlines()[1] == "False False ['--flag']"
    (tmp_path / "threads.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), open('late.txt', 'w').write('x'))).start()\n"
    )
    assert warm_python.run([str(tmp_path / "threads.py")], cwd=tmp_path).returncode == 0
    assert (tmp_path / "late.txt").is_file()  # non-daemon threads are joined before exit, as in python
    (tmp_path / "fails.py").write_text("def broken():\n    raise ValueError('the message')\nbroken()\n")
    failed = warm_python.run([str(tmp_path / "fails.py")], cwd=tmp_path)
    assert failed.returncode == 1 and failed.stderr.splitlines()[-1] == "ValueError: the message"
    assert "warm_server" not in failed.stderr and "fails.py" in failed.stderr.splitlines()[1]
