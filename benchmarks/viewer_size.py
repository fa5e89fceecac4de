"""How big the viewer's HTML file is, and how long it takes to build: the bundled toy4 model and the real size.

    python benchmarks/viewer_size.py [--repeats 3] [--browser] [--json out/benchmarks/viewer_size.json]

Two cases, each built ``--repeats`` times (median build time: ``view_html`` + writing the file):

- **bundled**: a real run of the bundled toy4 model, 2 prompts, all 32 steps, logits recorded, every
  layer's ``hook_resid_post`` (logit lens) and ``attn.hook_pattern`` cached;
- **real size**: a synthetic ``Trajectory`` of the released model's shape (1 prompt of 16 tokens, one
  256-token canvas, 48 steps, 262,144-token vocabulary, no full logits) with top-10 per position and
  step, as :class:`~diffinterp.figures.viewer.TopKRecorder` keeps it, ``#id`` token labels; then
  with the self-conditioning view, with a 30-layer logit lens, and with one (layer, step) of
  attention ``[1, 16, 256, 272]``.

``--browser`` also opens the largest real-size page in headless Chromium (Debian's ``chromium``, driven
by Playwright) and times loading it and moving the step scrubber (median over every step, with a
position selected, so the lens and attention panels redraw too).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import diffinterp as di
from diffinterp.core.sampler import never_stop_early
from diffinterp.figures import viewer as vw
from diffinterp.records.cache import DenoisingCache
from diffinterp.records.files import write_json_atomic
from diffinterp.records.trajectory import BlockRecord, StepRecord, Trajectory

PROMPTS = ["arith a=3 b=a+4 ? b", "hop x=5 q=7 m=x k=q t=m ? t"]
REAL = {"prompt": 16, "canvas": 256, "steps": 48, "vocab": 262_144, "layers": 30, "heads": 16, "k": 10}


def synthetic_trajectory(prompt: int, canvas: int, steps: int, vocab: int, seed: int = 0) -> Trajectory:
    """A trajectory of the given shape (batch 1, one canvas, no logits): random noise tokens, a canvas
    that commits a growing share of positions, entropies falling with the steps."""
    g = torch.Generator().manual_seed(seed)
    final = torch.randint(0, vocab, (1, canvas), generator=g)
    commit_at = torch.randint(0, steps, (1, canvas), generator=g)
    records, canvas_in = [], torch.randint(0, vocab, (1, canvas), generator=g)
    for step in range(steps):
        accepted = commit_at <= step
        noise = torch.randint(0, vocab, (1, canvas), generator=g)
        argmax = torch.where(accepted | (torch.rand(1, canvas, generator=g) < 0.5), final, noise)
        canvas_out = torch.where(accepted, final, torch.randint(0, vocab, (1, canvas), generator=g))
        entropy = torch.rand(1, canvas, generator=g) * 5 * (1 - step / steps)
        records.append(
            StepRecord(step, steps - step, 1.0 - 0.5 * step / steps, canvas_in, argmax, argmax, accepted, canvas_out,
                       entropy, torch.ones(1, dtype=torch.bool))
        )  # fmt: skip
        canvas_in = canvas_out
    prompt_ids = torch.randint(0, vocab, (1, prompt), generator=g)
    return Trajectory(
        prompt_ids=prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        sequences=torch.cat([prompt_ids, final], 1),
        blocks=[BlockRecord(0, prompt, records, final)],
        bottleneck="continuous",
        generation={"max_denoising_steps": steps},
        canvas_length=canvas,
        tokens_per_forward=torch.ones(1),
    )


def synthetic_topk(steps: int, canvas: int, vocab: int, k: int, sc: bool, seed: int = 1) -> vw.TopK:
    """Top-k of the real shape ``[steps, 1, canvas, k]``: distinct random ids, sorted probabilities."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (steps, 1, canvas, k), generator=g)
    probs = torch.rand(steps, 1, canvas, k, generator=g).pow(4).softmax(-1).sort(-1, descending=True).values
    return vw.TopK(ids, probs, probs.pow(1.2) if sc else None)


def synthetic_lens(steps: int, layers: int, canvas: int, vocab: int, seed: int = 2) -> vw.LensTop1:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (steps, layers, 1, canvas), generator=g)
    return vw.LensTop1(
        tokens, torch.rand(steps, layers, 1, canvas, generator=g), list(range(steps)), list(range(layers))
    )


def measure(repeats: int, build) -> dict:
    """Median seconds of ``build() -> html`` plus an atomic write, and the file's size."""
    times, size = [], 0
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            start = time.perf_counter()
            path = vw.write_text_atomic(Path(folder) / "view.html", build())
            times.append(time.perf_counter() - start)
            size = path.stat().st_size
    return {"bytes": size, "MiB": round(size / 2**20, 2), "build_seconds": round(statistics.median(times), 3)}


SCRUB = """() => {
  const range = document.getElementById("step"), times = [];
  document.querySelector('#canvas .tok[data-pos="5"]').click();
  for (let s = 0; s <= +range.max; s++) {
    const start = performance.now();
    range.value = String(s);
    range.dispatchEvent(new Event("input"));
    void document.body.offsetHeight;  // force layout, so the time includes it
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}"""


def browser_timings(html: str, executable: str = "chromium") -> dict:
    """Load time and median scrub step (ms) of a page in headless Chromium."""
    import shutil

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        path = Path(folder) / "view.html"
        path.write_text(html)
        browser = playwright.chromium.launch(executable_path=shutil.which(executable), args=["--no-sandbox"])
        page = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 1000}).new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("#canvas .tok")
        load = time.perf_counter() - start
        scrub = page.evaluate(SCRUB)
        browser.close()
    return {"load_seconds": round(load, 2), "scrub_step_ms": round(scrub, 1), "page_errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--browser", action="store_true", help="also time loading and scrubbing in headless Chromium")
    parser.add_argument("--json", default="out/benchmarks/viewer_size.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"command": "python benchmarks/viewer_size.py", "real_shape": REAL}

    hm = di.load_model("toy4")
    ids, mask = hm.to_tokens(PROMPTS)
    steps = hm.model.generation_config.max_denoising_steps
    torch.manual_seed(0)
    traj, cache = hm.run_with_cache(
        ids, ["decoder.blocks.*.hook_resid_post", "decoder.blocks.*.attn.hook_pattern"], attention_mask=mask,
        record_logits=True, **never_stop_early(steps),
    )  # fmt: skip
    report["bundled"] = {
        "prompts": len(PROMPTS),
        "steps": traj.block(0).n_steps,
        "canvas": traj.canvas_length,
        **measure(args.repeats, lambda: vw.view_html(traj, cache, hm=hm)),
    }
    report["bundled_trajectory_only"] = measure(args.repeats, lambda: vw.view_html(traj, tokenizer=hm.tokenizer))

    r = REAL
    big = synthetic_trajectory(r["prompt"], r["canvas"], r["steps"], r["vocab"])
    topk = {0: synthetic_topk(r["steps"], r["canvas"], r["vocab"], r["k"], sc=False)}
    topk_sc = {0: synthetic_topk(r["steps"], r["canvas"], r["vocab"], r["k"], sc=True)}
    lens = {0: synthetic_lens(r["steps"], r["layers"], r["canvas"], r["vocab"])}
    attention = DenoisingCache()
    keys = r["prompt"] + r["canvas"]
    attention.add(
        "decoder.blocks.29.attn.hook_pattern", 47, 0, torch.rand(1, r["heads"], r["canvas"], keys).softmax(-1)
    )
    report["real_size"] = {
        "top-k": measure(args.repeats, lambda: vw.view_html(big, topk=topk)),
        "top-k + self-conditioning": measure(args.repeats, lambda: vw.view_html(big, topk=topk_sc)),
        "top-k + self-conditioning + lens (30 layers)": measure(
            args.repeats, lambda: vw.view_html(big, topk=topk_sc, lens=lens)
        ),
        "... + attention of one (layer, step)": measure(
            args.repeats, lambda: vw.view_html(big, attention, topk=topk_sc, lens=lens)
        ),
    }
    for name, row in [("bundled", report["bundled"]), ("bundled, trajectory only", report["bundled_trajectory_only"])]:
        print(f"{name:<52} {row['MiB']:7.2f} MiB  {row['build_seconds']:6.3f} s")
    for name, row in report["real_size"].items():
        print(f"real size: {name:<41} {row['MiB']:7.2f} MiB  {row['build_seconds']:6.3f} s")
    if args.browser:
        report["real_size_in_chromium"] = browser_timings(vw.view_html(big, attention, topk=topk_sc, lens=lens))
        print(f"real size in headless Chromium: {report['real_size_in_chromium']}")
    print(f"wrote {write_json_atomic(args.json, report)}")


if __name__ == "__main__":
    main()
