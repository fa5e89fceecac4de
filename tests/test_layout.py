"""The layout: the import-layer contracts hold and would catch a violation; the public API is intact;
case studies plug in through the ``diffinterp.case_studies`` entry-point group, also from outside."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import diffinterp as di

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
EXAMPLE = REPO / "docs" / "examples" / "external_study"


def lint_imports(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.fixture
def package_copy(tmp_path):
    """The package sources (no assets) and the contracts, copied where an edit cannot touch the repo."""
    for package in ("diffinterp", "case_studies"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # the copy shadows the installed package
    return tmp_path, env


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_layer_contract_catches_an_import_from_a_higher_layer(package_copy):
    root, env = package_copy
    assert lint_imports(root, env).returncode == 0  # the copy itself is clean
    append(root / "diffinterp/records/cache.py", "from diffinterp.studies import prompts  # noqa: E402,F401")
    result = lint_imports(root, env)
    assert result.returncode != 0
    assert "Data flows one way" in result.stdout and "BROKEN" in result.stdout
    assert "diffinterp.records.cache -> diffinterp.studies.prompts" in result.stdout


def test_the_acyclic_contract_catches_a_cycle_inside_a_layer(package_copy):
    root, env = package_copy
    append(root / "diffinterp/phenomena/settling.py", "import diffinterp.phenomena.smearing  # noqa: E402,F401")
    append(root / "diffinterp/phenomena/smearing.py", "import diffinterp.phenomena.settling  # noqa: E402,F401")
    result = lint_imports(root, env)
    assert result.returncode != 0
    assert "No import cycles" in result.stdout and "BROKEN" in result.stdout


def test_independent_siblings_may_not_import_each_other(package_copy):
    root, env = package_copy
    append(root / "diffinterp/instruments/lens.py", "from diffinterp.organisms import task  # noqa: E402,F401")
    result = lint_imports(root, env)
    assert result.returncode != 0 and "diffinterp.instruments.lens -> diffinterp.organisms.task" in result.stdout


def test_the_public_api_is_where_the_design_says():
    for name in (
        "load_model",
        "load_hf_model",
        "load_tokenizer",
        "load_ar_baseline",
        "HookedDiffusionGemma",
        "Trajectory",
        "StepRecord",
        "BlockRecord",
        "DenoisingCache",
        "CacheBudgetError",
        "Bottleneck",
        "BOTTLENECK_MODES",
        "tiny_config",
        "tiny_model",
        "real_config",
        "real_generation_config",
        "real_pattern_tiny_config",
        "meta_model",
    ):
        assert hasattr(di, name), name
    assert callable(di.lens.logit_lens) and callable(di.patching.step_layer_sweep)
    assert callable(di.probes.fit_probes) and callable(di.depth.serial_depth)


def test_the_built_in_studies_register_through_the_entry_point_group():
    from diffinterp.studies.registry import available_studies, load_study

    entries = available_studies()
    builtin = {
        "non-chronological",
        "smearing",
        "intermediate-context",
        "monitorability",
        "variable-transparency",
        "self-correction",
    }
    assert builtin <= set(entries)
    assert all(entries[name].target.startswith("case_studies.") for name in builtin)
    assert callable(load_study("self-correction").run)
    with pytest.raises(KeyError, match="did you mean 'smearing'"):
        load_study("smeering")


def external_study_on_path(root: Path) -> dict:
    """The worked example of docs/writing-a-case-study.md, as an installed distribution: its package
    on the path and a dist-info folder declaring the entry point (what `pip install` would write)."""
    shutil.copytree(EXAMPLE / "diffinterp_acceptance", root / "diffinterp_acceptance")
    info = root / "diffinterp_acceptance-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diffinterp-acceptance\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[diffinterp.case_studies]\nacceptance = diffinterp_acceptance\n")
    return {"PYTHONPATH": str(root)}


def test_an_external_study_runs_through_the_cli_with_the_shared_flags(tmp_path, warm_python):
    env = external_study_on_path(tmp_path / "site")
    cli = ["-m", "diffinterp.cli", "case-study"]
    listing = warm_python.run([*cli, "--help"], env=env)
    assert listing.returncode == 0 and "acceptance" in listing.stdout and "diffinterp_acceptance" in listing.stdout
    out = tmp_path / "acceptance"
    flags = [
        "--model",
        "toy4",
        "--n",
        "6",
        "--seed",
        "3",
        "--tasks",
        "seq",
        "--max-denoising-steps",
        "5",
        "--bottleneck",
        "argmax",
    ]
    result = warm_python.run([*cli, "acceptance", *flags, "--out", str(out)], env=env)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["options"] == {
        "tasks": ["seq"],
        "seed": 3,
        "quick": False,
        "bottleneck": "argmax",
        "max_denoising_steps": 5,
    }
    # An independent recomputation: the same prompts, seed and settings through `diffinterp eval`'s
    # evaluator and a plain generate give the study's accuracy and per-step acceptance.
    from diffinterp.organisms.evaluate import evaluate_task
    from diffinterp.studies import prompt_set

    hm = di.load_model("toy4")
    expected = evaluate_task(hm, "seq", n=6, seed=3, bottleneck="argmax", max_denoising_steps=5)
    seq = metrics["per_task"]["seq"]
    assert seq["accuracy"]["value"] == pytest.approx(expected["accuracy"]) and seq["accuracy"]["n"] == 6
    ps = prompt_set(hm, "seq", 6)
    import torch

    torch.manual_seed(3)
    traj = hm.generate(ps.input_ids, attention_mask=ps.attention_mask, bottleneck="argmax", max_denoising_steps=5)
    accepted, active = traj.stack("accepted"), traj.stack("active")
    share = [float(accepted[s][active[s]].float().mean()) if active[s].any() else None for s in range(len(active))]
    assert seq["accepted_share_by_step"] == pytest.approx(share)
    assert seq["steps_per_canvas"]["value"] == pytest.approx(float(active.sum(0).float().mean()))


def _names_the_studies_use() -> dict[str, set[str]]:
    """Every diffinterp name the built-in studies reach (``from m import x`` and ``alias.x``), by study."""
    import ast
    import importlib

    used: dict[str, set[str]] = {}
    for path in sorted((REPO / "case_studies").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffinterp"):
                for alias in node.names:
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                        modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    except ImportError:
                        used.setdefault(alias.name, set()).add(path.stem)
            elif isinstance(node, ast.Import):
                modules.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("diffinterp")})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                if not modules[node.value.id] == "diffinterp":  # di.load_model and friends: the public API
                    used.setdefault(node.attr, set()).add(path.stem)
    return used


def test_every_helper_the_studies_use_is_public_and_documented():
    """docs/writing-a-case-study.md lists every helper the built-in studies use; none is private."""
    doc = (REPO / "docs" / "writing-a-case-study.md").read_text()
    used = _names_the_studies_use()
    assert len(used) > 50  # the scan found the studies' imports
    private = sorted(name for name in used if name.startswith("_"))
    assert not private, f"the studies use private helpers: {private}"
    import re

    undocumented = sorted(
        name
        for name in used
        if not re.search(rf"`{re.escape(name)}[`(]", doc)  # the name itself, not a longer one it begins
        and not (name.startswith("PAPER_") and "`PAPER_*`" in doc)
    )
    assert not undocumented, f"used by the studies but not in the helper table: {undocumented}"
