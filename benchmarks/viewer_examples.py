"""The viewer pages and the screenshot the docs show: ``docs/figures/viewer/``.

    python benchmarks/viewer_examples.py [--out docs/figures/viewer] [--no-screenshot]

- ``example.html``, ``canvas_evolution.png``: the run of the Python example in docs/viewer.md (the
  default organism, carry: two prompts against twins whose last digit differs, 8 steps, step x position
  patching at layer 2);
- ``viewer.png``: a screenshot of ``example.html`` in headless Chromium (Debian's ``chromium``, driven by
  Playwright): the first prompt at step 1, a position selected (lens, attention) and a token hovered (top-k,
  self-conditioning);
- ``arith.html`` (toy4): the run behind docs/instruments.md's canvas-evolution, logit-lens and commit-order
  figures (its four arith prompts, all 32 steps, seed 0), with attention cached as well; the script
  checks that it is that run (the settle steps in ``docs/figures/instruments/numbers.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

import diffinterp as di
from diffinterp import patching as pt
from diffinterp.figures.canvas import canvas_evolution
from diffinterp.figures.viewer import write_view
from diffinterp.instruments import lens as lz
from diffinterp.records.files import save_figure

NAMES = ["decoder.blocks.*.hook_resid_post", "decoder.blocks.*.attn.hook_pattern"]
CLEAN = ["carry 1 9 9 8 7 7 2 5 1 3", "carry 4 0 2 8 1 1 5 6 2 0"]
CORRUPT = ["carry 1 9 9 8 7 7 2 5 1 4", "carry 4 0 2 8 1 1 5 6 2 9"]
# docs/instruments.md section 1 (benchmarks/instrument_examples.py): the first four held-out arith prompts
# with a c= step in the answer.
ARITH = [
    "arith a=9 b=a*2 c=b-1 d=c+1 ? d",
    "arith a=6 b=a+6 c=b-7 d=c*2 ? d",
    "arith a=3 b=a-1 c=b-2 ? c",
    "arith a=2 b=a-1 c=b+2 d=c-2 ? d",
]


def example(hm, out: Path) -> Path:
    """docs/viewer.md's Python example, written to ``out``."""
    clean, cache, corrupt, _ = pt.coupled_runs(hm, CLEAN, CORRUPT, NAMES, max_denoising_steps=8)
    _, clean_out = pt.final_outputs(hm, clean)
    _, corrupt_out = pt.final_outputs(hm, corrupt)
    metric = pt.LogitDiff(clean_out, corrupt_out)
    sweep = pt.step_position_sweep(
        hm, clean, corrupt, cache, metric, hook="decoder.blocks.2.hook_resid_post", mode="step"
    )
    save_figure(canvas_evolution(clean, tokenizer=hm.tokenizer), out / "canvas_evolution")
    (out / "canvas_evolution.svg").unlink()  # the docs show the PNG
    return write_view(
        out / "example.html",
        clean,
        cache,
        hm=hm,
        patching=[sweep],
        title="diffinterp view: carry, clean vs last digit changed",
    )


def arith(hm, out: Path, numbers: Path) -> Path:
    """The instruments page's arith run, with logits and attention; checked against its numbers."""
    ids, mask = hm.to_tokens(ARITH)
    torch.manual_seed(0)
    steps = hm.model.generation_config.max_denoising_steps
    traj, cache = hm.run_with_cache(ids, NAMES, attention_mask=mask, record_logits=True, stability_threshold=steps)
    expected = json.loads(numbers.read_text())
    if (
        expected["arith_prompt"][0] != ARITH[0]
        or lz.settle_steps(traj)[0].tolist() != expected["arith_settle_steps_row0"]
    ):
        raise SystemExit(f"this is not the run of {numbers}: rerun benchmarks/instrument_examples.py first")
    return write_view(out / "arith.html", traj, cache, hm=hm, title="diffinterp view: docs/instruments.md, arith")


def screenshot(page: Path, png: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium), or pass --no-screenshot")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as folder:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        tab.goto(page.resolve().as_uri())
        tab.select_option("#row", "0")  # the first prompt
        tab.locator("#step").fill("1")
        tab.locator('#canvas .tok[data-pos="2"]').click()
        tab.locator('#canvas .tok[data-pos="9"]').hover()
        shot = Path(folder) / "shot.png"
        tab.screenshot(path=str(shot), full_page=True)
        browser.close()
        shutil.move(shot, png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/viewer")
    parser.add_argument("--numbers", default="docs/figures/instruments/numbers.json")
    parser.add_argument("--no-screenshot", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [example(di.load_model(), out), arith(di.load_model("toy4"), out, Path(args.numbers))]
    if not args.no_screenshot:
        screenshot(written[0], out / "viewer.png")
        written.append(out / "viewer.png")
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
