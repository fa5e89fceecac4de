"""Every subcommand answers bad values with one error style: ``diffinterp CMD: error: ...``, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffinterp.cli import main

BAD = {
    "demo": [["--prompt", ""], ["--max-denoising-steps", "0"], ["--t-max", "-1"], ["--bottleneck", "beam"]],
    "hooks": [["--batch", "-3"], ["--prompt-len", "0"], ["--config", "no-such-folder"]],
    "run": [["--prompt", "x", "--cache", ",", "--out", "OUT/c.safetensors"],
            ["--prompt", "x", "--cache", "decoder.hook_embed", "--out", "OUT/same", "--trajectory", "OUT/same"],
            ["--prompt", "x", "--cache", "decoder.hook_embed", "--cache-steps", "a,b", "--out", "OUT/c"],
            ["--prompt", "x", "--cache", "decoder.no_such_hook", "--out", "OUT/c"]],
    "lens": [["--positions", "5-2"], ["--positions", "0-99"], ["--positions", "x"]],
    "patch": [["--clean", "", "--corrupt", "x"]],
    "depth": [["--config", "bogus"], ["--chain-lengths", "0"]],
    "case-study": [["monitorability", "--tasks", ","], ["monitorability", "--n", "0"],
                   ["monitorability", "--tasks", "nope"], ["monitorability", "--quantize", "int8"]],
    "view": [["OUT/missing.safetensors"], ["OUT"], ["TRAJ", "--top-k", "0"], ["TRAJ", "--max-attention-mb", "-1"],
             ["TRAJ", "--max-attention-mb", "nan"], ["TRAJ", "--out", "TRAJ"], ["TRAJ", "--out", "OUT"],
             ["TRAJ", "--cache", "TRAJ"], ["TRAJ", "--patching", "TRAJ"], ["TRAJ", "--patching", "OUT/missing.json"],
             ["TRAJ", "--model", "no-such-model"], ["TRAJ", "--tokenizer", "OUT/no-such-folder"],
             ["OUT/not-a-record.safetensors"]],
    "train": [["--organism", "bogus", "--model", "ar", "--out", "OUT/t"]],
    "eval": [["--n", "0"], ["--n", "-1"], ["--batch-size", "0"], ["--task", "bogus"], ["--model", "no-such-model"],
             ["--task", "arith", "--model", "toy4", "--out-of-range-flag"], ["--quantize", "int3"],
             ["--ar", "--quantize", "int8", "--n", "2"]],
}  # fmt: skip


def cases():
    for command, variants in BAD.items():
        for variant in variants:
            yield pytest.param(command, variant, id=f"{command} {' '.join(variant)}")


def tiny_trajectory(folder):
    """A saved trajectory of a tiny random model (what ``diffinterp view`` reads)."""
    import torch

    import diffinterp as di

    path = folder / "run.trajectory.safetensors"
    if not path.exists():
        hm = di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(vocab_size=64), seed=0))
        torch.manual_seed(0)
        hm.generate(torch.tensor([[5, 6]]), max_new_tokens=8, max_denoising_steps=2).save(path)
    return path


@pytest.mark.parametrize(("command", "variant"), list(cases()))
def test_bad_values_get_one_clear_error(command, variant, tmp_path, capsys):
    argv = [command] + [a.replace("OUT", str(tmp_path)) for a in variant]
    if command in ("demo", "lens", "patch"):
        argv += ["--out", str(tmp_path / "out")]
    if command == "eval" and "--model" not in variant:
        argv += ["--model", "toy4"]
    if command == "view":  # a real (tiny) trajectory to view, and a file that is not a record
        argv = [a.replace("TRAJ", str(tiny_trajectory(tmp_path))) for a in argv]
        (tmp_path / "not-a-record.safetensors").write_text("not a record")
        if "--out" not in variant:
            argv += ["--out", str(tmp_path / "out")]
        if "--model" not in variant and "--tokenizer" not in variant:
            argv += ["--model", "toy4"]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"diffinterp {command}: error:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_an_unwritable_output_is_an_error_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["lens", "--model", "toy4", "--max-denoising-steps", "2", "--out", str(blocker / "inside")])
    err = capsys.readouterr().err
    assert code == 2 and "diffinterp lens: error:" in err and "Traceback" not in err


def test_outputs_replace_earlier_runs_whole_and_clean_interrupted_ones(tmp_path, capsys):
    out = tmp_path / "lens"
    out.mkdir()
    (out / "stale_from_an_earlier_run.png").write_text("old")
    leftover = tmp_path / ".lens.abc123.tmp"  # what a killed run leaves: a staging folder
    leftover.mkdir()
    (leftover / "half.png").write_text("half")
    assert main(["lens", "--model", "toy4", "--max-denoising-steps", "2", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["commit_order.png", "commit_order.svg", "lens.json", "logit_lens.png", "logit_lens.svg"]
    assert not leftover.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["lens"]


def test_written_files_follow_the_umask(tmp_path):
    import os

    import torch

    import diffinterp as di
    from diffinterp.records.files import write_json_atomic

    hm = di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(vocab_size=64), seed=0))
    torch.manual_seed(0)
    traj = hm.generate(torch.tensor([[5, 6]]), max_new_tokens=8, max_denoising_steps=2)
    old = os.umask(0o027)
    try:
        saved = traj.save(tmp_path / "t.safetensors")
        written = write_json_atomic(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert oct(saved.stat().st_mode & 0o777) == oct(0o640) and oct(written.stat().st_mode & 0o777) == oct(0o640)
    (tmp_path / ".t.safetensors.zzz.tmp").write_bytes(b"partial")  # an interrupted save
    traj.save(tmp_path / "t.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "t.safetensors"]


@pytest.mark.parametrize("argv", [["--help"], ["case-study", "--help"], ["eval", "--help"], ["depth", "--help"]])
def test_help_loads_neither_torch_nor_transformers(argv):
    """Help is argument parsing only: the heavy libraries load when a command runs, not before."""
    code = (
        "import sys\nfrom diffinterp.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'transformer_lens', 'nnsight') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_option_of_every_command_has_help():
    import argparse

    from diffinterp.cli import build_parser

    missing = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions if not a.help]
    assert not missing, missing
