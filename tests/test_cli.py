"""The diffinterp command, run as a user would."""

from __future__ import annotations

import subprocess

import pytest
import torch

import diffinterp as di


@pytest.fixture
def run_cli(warm_python):
    """``python -m diffinterp.cli ARGS`` in a new process (forked from the warm server, see conftest.py)."""

    def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
        return warm_python.run(["-m", "diffinterp.cli", *args], cwd=cwd)

    return run


def test_hooks_lists_the_real_model_from_the_meta_device(run_cli):
    result = run_cli("hooks", "--config", "real")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# 908 hook points")
    assert any(line.startswith("decoder.blocks.29.attn.hook_pattern") and "[1, 16, 256, 272]" in line for line in lines)
    assert any(line.startswith("decoder.hook_logits") and "[1, 256, 262144]" in line for line in lines)


def test_demo_writes_figures(run_cli, tmp_path):
    result = run_cli(
        "demo", "--out", str(tmp_path / "demo"), "--max-new-tokens", "8", "--max-denoising-steps", "3", "--no-studies"
    )
    assert result.returncode == 0, result.stderr
    assert "step   2" in result.stdout
    for name in ("canvas_evolution_block0", "entropy_heatmap_block0"):
        assert (tmp_path / "demo" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "demo" / f"{name}.svg").is_file()
    trajectory = di.Trajectory.load(tmp_path / "demo" / "trajectory.safetensors")
    assert trajectory.steps_per_block == [3]


def test_run_saves_cache_and_trajectory(run_cli, tmp_path):
    out = tmp_path / "cache.safetensors"
    result = run_cli(
        "run",
        "--model",
        "toy4",
        "--prompt",
        "arith a=1 ? a",
        "--cache",
        "decoder.blocks.*.hook_resid_post,decoder.hook_logits",
        "--out",
        str(out),
        "--max-new-tokens",
        "8",
        "--max-denoising-steps",
        "3",
    )
    assert result.returncode == 0, result.stderr
    cache = di.DenoisingCache.load(out)
    trajectory = di.Trajectory.load(tmp_path / "cache.trajectory.safetensors")
    assert cache.steps("decoder.hook_logits") == list(range(trajectory.steps_per_block[0]))
    assert cache["decoder.hook_logits", 0].dtype == torch.float32


def test_cli_errors_are_clear(run_cli, tmp_path):
    result = run_cli("run", "--prompt", "a", "--cache", "decoder.blocks.0.hook_resid", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "did you mean 'decoder.blocks.0.hook_resid_pre'" in result.stderr


def test_demo_runs_the_case_studies_and_links_every_figure(run_cli, tmp_path):
    """`diffinterp demo` (the README's main job): quick studies + a report whose links all resolve.

    At 8 denoising steps to keep the suite short; `make demo` runs the checkpoint's full budget."""
    import json
    import re

    out = tmp_path / "demo"
    result = run_cli("demo", "--max-denoising-steps", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = (out / "report.md").read_text()
    for name in ("non-chronological", "smearing", "intermediate-context", "monitorability"):
        metrics = json.loads((out / name.replace("-", "_") / "metrics.json").read_text())
        assert metrics["summary"] and metrics["figures"], name
        assert f"## {name}" in report
    links = re.findall(r"\]\(([^)#]+)\)", report)
    assert len(links) >= 4 + 2 + 4  # metrics files, the demo's figures, at least a figure per study
    for link in links:
        assert (out / link).is_file(), link


def test_case_study_command_writes_metrics(run_cli, tmp_path):
    import json

    result = run_cli(
        "case-study", "self-correction", "--model", "toy4", "--quick", "--out", str(tmp_path / "sc"), "--seed", "3",
        "--tasks", "arith,hop", "--bottleneck", "argmax", "--max-denoising-steps", "6",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "sc" / "metrics.json").read_text())
    options = metrics["options"]
    assert options["seed"] == 3 and options["quick"] is True and options["tasks"] == ["arith", "hop"]
    assert options["bottleneck"] == "argmax" and options["max_denoising_steps"] == 6
    assert len(metrics["revisions_per_sample_by_step"]) <= 6
    assert json.loads(result.stdout[: result.stdout.rindex("}") + 1]) == metrics["summary"]
    bad = run_cli("case-study", "no-such-study")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "self-correction" in bad.stderr
    fixed = run_cli("case-study", "monitorability", "--tasks", "arith", "--out", str(tmp_path / "m"))
    assert fixed.returncode == 2 and "fixed task; drop --tasks" in fixed.stderr
    assert not (tmp_path / "m").exists()


def test_lens_command_reads_every_final_token_at_the_last_layer(run_cli, tmp_path):
    import json

    result = run_cli(
        "lens",
        "--model",
        "toy4",
        "--prompt",
        "arith a=3 b=a+4 ? b",
        "--max-denoising-steps",
        "4",
        "--out",
        str(tmp_path),
        "--positions",
        "0-5",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "lens.json").read_text())
    assert [row["position"] for row in summary["positions"]] == list(range(6))
    for row in summary["positions"]:
        # the lens at the last layer is the model's own logits, and the final canvas is the last step's
        # argmax, so every position is predicted by some (step, layer) no later than the last step
        assert 0 <= row["lens_first_step"] < summary["steps"] and 0 <= row["lens_first_layer"] <= max(summary["layers"])
        assert 0 <= row["settle_step"] < summary["steps"]
    assert (tmp_path / "logit_lens.png").is_file() and (tmp_path / "commit_order.svg").is_file()
    bad = run_cli("lens", "--positions", "0-99", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "outside the canvas" in bad.stderr


def test_patch_command_restores_the_clean_run_at_the_last_step_and_layer(run_cli, tmp_path):
    import json

    clean, corrupt = "hop x=5 q=7 m=x k=q t=m ? t", "hop x=3 q=7 m=x k=q t=m ? t"
    result = run_cli(
        "patch", "--clean", clean, "--corrupt", corrupt, "--max-denoising-steps", "4", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "patching.json").read_text())
    assert summary["axes"]["step"] == [0, 1, 2, 3]
    assert summary["clean_value"] > 0 > summary["corrupt_value"]
    # the last layer's residual at the last step determines the final logits: patching it restores all
    assert abs(summary["restored_fraction"][-1][-1] - 1.0) < 1e-4
    assert (tmp_path / "patching_step-layer.png").is_file()
    same = run_cli(
        "patch", "--clean", clean, "--corrupt", clean, "--max-denoising-steps", "4", "--out", str(tmp_path / "same")
    )
    assert same.returncode == 2 and "same output" in same.stderr


def test_sae_train_writes_a_sae_lens_folder_and_eval_prints_the_per_step_tables(run_cli, tmp_path):
    out = tmp_path / "sae"
    result = run_cli(
        "sae", "train", "--model", "carry", "--hook", "decoder.blocks.1.hook_resid_post", "--steps", "0-3",
        "--width", "64", "--k", "4", "--training-steps", "15", "--batch-size", "128",
        "--prompts-per-run", "16", "--held-out", "8", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "held-out explained variance" in result.stdout
    assert {"cfg.json", "sae_weights.safetensors", "diffinterp_sae.json", "training_curve.png"} <= {
        p.name for p in out.iterdir()
    }
    from diffinterp.instruments.saes.training import load_sae

    sae, metadata = load_sae(out)
    assert sae.cfg.d_sae == 64 and metadata["spec"].steps == (0, 1, 2, 3)
    result = run_cli("sae", "eval", str(out), "--model", "carry", "--n", "4", "--json", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    assert "reconstruction per denoising step" in result.stdout and "spliced at one step" in result.stdout
    import json

    tables = json.loads((tmp_path / "eval.json").read_text())
    assert tables["hook"] == "decoder.blocks.1.hook_resid_post" and tables["splice"]["n"] == 4
    delta = tables["splice"]["steps"][0]["delta_ce"]
    assert f"{delta['value']:+.3f} [{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}]" in result.stdout
    bad = run_cli("sae", "train", "--model", "carry", "--hook", "encoder.blocks.0.hook_resid_post", "--out", str(out))
    assert bad.returncode == 2 and "not a decoder hook" in bad.stderr
    assert (out / "cfg.json").is_file()  # the earlier folder is untouched by the refused run
