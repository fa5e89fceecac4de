"""The trajectory viewer: its data against the records and independent references, the command, and the
page itself in a real headless Chromium (skipped, saying why, where none is installed)."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

import diffinterp as di
from diffinterp.cli import main
from diffinterp.figures import viewer as vw
from diffinterp.instruments import lens as lz
from diffinterp.instruments import patching as pt
from diffinterp.records.decoding import token_labels

CLEAN = ["arith a=3 b=a+4 ? b", "hop x=5 q=7 m=x k=q t=m ? t"]
CORRUPT = ["arith a=5 b=a+4 ? b", "hop x=3 q=7 m=x k=q t=m ? t"]
NAMES = ["decoder.blocks.*.hook_resid_post", "decoder.blocks.*.attn.hook_pattern"]
STEPS = 6
SAE_HOOK = "decoder.blocks.1.hook_resid_post"
SAE_FEATURES = [3, 11, 20]
TOL = 0.5 / vw.P_SCALE + 1e-6  # one quantisation step of a probability


@pytest.fixture(scope="module")
def hm():
    return di.load_model("toy4")  # the bundled four-task model (arith, hop, ...)


@pytest.fixture(scope="module")
def sae(hm):
    """A seeded, untrained SAELens Top-K SAE on layer 1's residual stream: the page must show what it
    computes, whatever it learned."""
    from diffinterp.instruments.saes.sae_lens_compat import import_sae_lens

    sae_lens = import_sae_lens()  # before any sae_lens submodule (it bridges TransformerLens 4)
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    cfg = sae_lens.TopKSAEConfig(d_in=hm.text_config.hidden_size, d_sae=32, k=4,
                                 metadata=SAEMetadata(model_name="toy4", hook_name=SAE_HOOK))  # fmt: skip
    return sae_lens.TopKSAE(cfg).eval()


@pytest.fixture(scope="module")
def run(hm, sae):
    """Two prompts of the toy4 model, every step run, with logits, the residual stream and attention
    cached, a step x layer patching sweep from corrupted twins, and three SAE features."""
    clean, cache, corrupt, _ = pt.coupled_runs(
        hm, CLEAN, CORRUPT, NAMES, max_denoising_steps=STEPS, stability_threshold=STEPS
    )
    _, clean_out = pt.final_outputs(hm, clean)
    _, corrupt_out = pt.final_outputs(hm, corrupt)
    sweep = pt.step_layer_sweep(hm, clean, corrupt, cache, pt.LogitDiff(clean_out, corrupt_out), mode="step")
    features = vw.FeatureSelection(sae, SAE_HOOK, features=SAE_FEATURES)
    page = vw.view_html(clean, cache, hm=hm, patching=[sweep], saes=[features], title="test run")
    return clean, cache, sweep, page


def page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="diffinterp-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def labels(hm, ids) -> list[str]:
    return token_labels(ids, hm.tokenizer)


def softmax(logits: torch.Tensor) -> np.ndarray:
    x = logits.double().numpy()
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------ data
def test_page_data_holds_every_step_of_the_trajectory(hm, run):
    clean, _, _, page = run
    data = page_data(page)
    block = data["blocks"][0]
    assert data["format"] == vw.FORMAT and data["rows"] == 2 and data["canvas"] == clean.canvas_length
    assert block["steps"] == STEPS == clean.block(0).n_steps
    shape = (STEPS, 2, clean.canvas_length)
    strings = data["strings"]
    for field in vw.FIELDS:
        ids = np.array([data["ids"][i] for i in block[field]]).reshape(shape)
        assert np.array_equal(ids, clean.stack(field).numpy()), field
    tokens = [strings[i] for i in block["argmax"]][: clean.canvas_length]  # step 0, row 0
    assert tokens == labels(hm, clean.step(0, 0).argmax[0])
    assert np.array_equal(np.array(block["accepted"]).reshape(shape), clean.stack("accepted").int().numpy())
    entropy = np.array(block["entropy"]).reshape(shape) / vw.E_SCALE
    assert np.abs(entropy - clean.stack("entropy").numpy()).max() <= 0.5 / vw.E_SCALE + 1e-6
    assert [strings[i] for i in data["prompts"][1]] == labels(hm, hm.to_tokens(CLEAN[1])[0][0])


def test_committed_is_the_step_from_which_the_argmax_stays_final(run):
    clean, _, _, page = run
    committed = np.array(page_data(page)["blocks"][0]["committed"]).reshape(2, -1)
    argmax = clean.stack("argmax").numpy()  # [S, B, C]
    for row in range(2):
        for pos in range(clean.canvas_length):
            column = argmax[:, row, pos]
            first = next(s for s in range(STEPS) if (column[s:] == column[-1]).all())  # brute force
            assert committed[row, pos] == first


def test_topk_is_the_softmax_of_the_recorded_logits(run):
    clean, _, _, page = run
    data = page_data(page)
    topk = data["blocks"][0]["topk"]
    k = topk["k"]
    assert k == vw.TOP_K
    ids = np.array([data["ids"][i] for i in topk["ids"]]).reshape(STEPS, 2, -1, k)
    probs = np.array(topk["p"]).reshape(STEPS, 2, -1, k) / vw.P_SCALE
    reference = softmax(clean.stack("logits"))  # [S, B, C, V]
    order = np.sort(reference, -1)[..., ::-1][..., :k]
    assert np.abs(probs - order).max() <= TOL  # the k largest probabilities, in order
    assert np.abs(np.take_along_axis(reference, ids, -1) - probs).max() <= TOL  # of these very tokens


@pytest.mark.parametrize("bottleneck", ["topk:3:renorm", "topk:3", "topp:0.2"])
def test_self_conditioning_view_rebuilds_the_next_steps_soft_embedding(hm, bottleneck):
    """The shipped view is the bottleneck's signal (``bottleneck_logits``): with ``topk:3:renorm`` its kept
    tokens carry all of it, softmax(view) @ E * sqrt(d) must be what the next step's
    ``decoder.sc.hook_soft_embed`` received; with the paper's remainder rule (``topk:3``, ``topp:0.2``)
    the kept tokens plus the remaining mass spread uniformly over the other V - K tokens must be."""
    ids, mask = hm.to_tokens(CLEAN)
    torch.manual_seed(1)
    traj, cache = hm.run_with_cache(
        ids, "decoder.sc.hook_soft_embed", attention_mask=mask, bottleneck=bottleneck, record_logits=True,
        max_denoising_steps=4, stability_threshold=4,
    )  # fmt: skip
    data = vw.view_data(traj, hm=hm)
    assert data["bottleneck"] == bottleneck
    topk = data["blocks"][0]["topk"]
    n_steps, canvas = traj.block(0).n_steps, traj.canvas_length
    view_ids = torch.tensor([data["ids"][i] for i in topk["ids"]]).view(n_steps, 2, canvas, -1)
    view_p = torch.tensor(topk["sc"], dtype=torch.float32).view(n_steps, 2, canvas, -1) / vw.P_SCALE
    embedding = hm.model.model.decoder.embed_tokens.weight.detach().float()
    vocab = embedding.shape[0]
    scale = hm.text_config.hidden_size**0.5
    for step in range(n_steps - 1):
        record = traj.step(0, step)
        probs = (record.logits.float() / record.temperature).softmax(-1)  # what the bottleneck reads
        if bottleneck.startswith("topk"):  # the paper's rules, written out independently of core.bottleneck
            keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, probs.topk(3, dim=-1).indices, True)
        else:
            keep = (probs >= 0.2).scatter_(-1, probs.argmax(-1, keepdim=True), True)
        kept_p = torch.where(keep, probs, torch.zeros_like(probs))
        if bottleneck.endswith(":renorm"):
            assert torch.all((view_p[step] > 0).sum(-1) <= 3)  # the view's top ranks carry the whole signal
            rebuilt = torch.einsum("bck,bckd->bcd", view_p[step], embedding[view_ids[step]]) * scale
            signal = kept_p / kept_p.sum(-1, keepdim=True)
        else:  # kept tokens with their probabilities, the rest of the mass uniform over the other tokens
            rest = (1 - kept_p.sum(-1, keepdim=True)) / (vocab - keep.sum(-1, keepdim=True))
            signal = torch.where(keep, probs, rest.expand_as(probs))
            rebuilt = signal @ embedding * scale
        assert (signal.gather(-1, view_ids[step]) - view_p[step]).abs().max() <= TOL  # what the page shows
        received = cache["decoder.sc.hook_soft_embed", step + 1]
        active = traj.step(0, step + 1).active
        assert active.any()
        err = (rebuilt[active] - received[active]).abs().max()
        assert err <= 3 * TOL * embedding.abs().max() * scale + 1e-5, (step, float(err))


def test_lens_is_the_full_vocabulary_logit_lens(hm, run):
    clean, cache, _, page = run
    lens = page_data(page)["blocks"][0]["lens"]
    data = page_data(page)
    reference = lz.logit_lens(hm, cache)  # [S, L, B, P, V]
    assert lens["layers"] == reference.layers and lens["steps"] == reference.steps
    shape = tuple(reference.logits.shape[:-1])
    top = np.array([data["ids"][i] for i in lens["top"]]).reshape(shape)
    assert np.array_equal(top, reference.argmax.numpy())
    best = reference.probs().max(-1).values.numpy()
    assert np.abs(np.array(lens["p"]).reshape(shape) / vw.P_SCALE - best).max() <= TOL


def test_attention_is_the_cached_pattern(run):
    clean, cache, _, page = run
    attention = page_data(page)["blocks"][0]["attention"]
    n_layers = len(attention["layers"])
    assert n_layers == len(cache.names) // 2
    for layer in attention["layers"]:
        for step in attention["steps"][str(layer)]:
            pattern = cache[f"decoder.blocks.{layer}.attn.hook_pattern", step]  # [B, H, Q, K]
            raw = np.frombuffer(base64.b64decode(attention["data"][f"{layer}:{step}"]), dtype=np.uint8)
            shipped = raw.reshape(tuple(pattern.shape)) / 255
            assert np.abs(shipped - pattern.numpy()).max() <= 0.5 / 255 + 1e-6


def test_attention_over_the_budget_is_a_clear_error(run):
    _, cache, _, _ = run
    with pytest.raises(ValueError, match="hook_pattern at fewer layers or steps"):
        vw.encode_attention(cache, 0, max_bytes=1000)


def test_patching_panel_holds_the_restored_fraction_and_reads_patching_json(run):
    _, _, sweep, page = run
    panel = page_data(page)["patching"][0]
    assert panel["axes"] == [["step", list(range(STEPS))], ["layer", [0, 1, 2, 3]]]
    expected = sweep.mean(normalised=True).reshape(-1).tolist()
    assert all(v is None if e != e else abs(v - e) <= 1e-4 for v, e in zip(panel["values"], expected, strict=True))
    written = {"axes": sweep.axes, "restored_fraction": sweep.mean(normalised=True).tolist(), "sweep": "step-layer"}
    assert (
        vw.patching_panel(json.loads(json.dumps(written)))["values"] == panel["values"]
    )  # as `diffinterp patch` writes
    with pytest.raises(ValueError, match="restored_fraction"):
        vw.patching_panel({"axes": {"step": [0]}})


def reference_commit(values: torch.Tensor, tol: float = 0.1) -> list[int]:
    """Brute force: the first step from which every later value is within ``tol`` x the largest
    magnitude of the final value (``values`` ``[steps]``)."""
    scale = max(float(values.abs().max()), 1e-12)
    return next(s for s in range(len(values)) if all(abs(float(v - values[-1])) <= tol * scale for v in values[s:]))


def test_sae_feature_panels_hold_the_saes_activations_and_commit_steps(run, sae):
    clean, cache, _, page = run
    panels = page_data(page)["blocks"][0]["features"]
    assert [p["feature"] for p in panels] == SAE_FEATURES and all(p["hook"] == SAE_HOOK for p in panels)
    n_steps = clean.block(0).n_steps
    # independent reference: SAELens's own encode of each cached step's activation
    with torch.no_grad():
        acts = torch.stack([sae.encode(cache[SAE_HOOK, s].float()) for s in range(n_steps)])  # [S, B, P, 32]
    assert acts[..., SAE_FEATURES].abs().sum() > 0  # the panels are not all zero
    for panel, f in zip(panels, SAE_FEATURES, strict=True):
        values = acts[..., f]
        assert panel["steps"] == n_steps and panel["positions"] == list(range(clean.canvas_length))
        values = values.detach()
        assert abs(panel["max"] - float(values.abs().max())) <= 1e-5 * max(1.0, panel["max"])
        shown = torch.tensor(panel["values"], dtype=torch.float64).view(values.shape) / vw.F_SCALE * panel["max"]
        assert (shown - values.double()).abs().max() <= 0.5 * panel["max"] / vw.F_SCALE + 1e-6
        commit = torch.tensor(panel["commit"]).view(values.shape[1:])
        for row in range(values.shape[1]):
            for pos in range(values.shape[2]):
                assert int(commit[row, pos]) == reference_commit(values[:, row, pos])


def test_changing_features_ranks_by_movement_over_steps_and_errors_are_clear(run, sae):
    clean, cache, _, _ = run
    trace = torch.zeros(3, 1, 2, 4)
    trace[:, 0, 0, 2] = torch.tensor([0.0, 1.0, 0.0])  # moves by 2
    trace[:, 0, 1, 1] = torch.tensor([0.0, 0.5, 0.5])  # moves by 0.5
    trace[:, 0, 0, 3] = 7.0  # large but constant: does not move
    assert vw.changing_features(trace, 3) == [2, 1, 0]
    top = vw.view_data(clean, cache, saes=[vw.FeatureSelection(sae, SAE_HOOK, top=2)])["blocks"][0]["features"]
    n = clean.block(0).n_steps
    with torch.no_grad():
        acts = torch.stack([sae.encode(cache[SAE_HOOK, s].float()) for s in range(n)])
    assert [p["feature"] for p in top] == vw.changing_features(acts, 2)
    with pytest.raises(ValueError, match="is not a feature of this SAE"):
        vw.view_data(clean, cache, saes=[vw.FeatureSelection(sae, SAE_HOOK, features=[32])])
    with pytest.raises(TypeError, match="a feature index is an integer"):
        vw.view_data(clean, cache, saes=[vw.FeatureSelection(sae, SAE_HOOK, features=[True])])
    numpy_index = vw.feature_panels(vw.FeatureSelection(sae, SAE_HOOK, features=[np.int64(3)]), cache, 0)
    assert numpy_index == vw.feature_panels(vw.FeatureSelection(sae, SAE_HOOK, features=[3]), cache, 0)
    with pytest.raises(ValueError, match="over the viewer's limit of 100"):
        vw.feature_panels(vw.FeatureSelection(sae, SAE_HOOK, features=[3]), cache, 0, max_values=100)
    with pytest.raises(ValueError, match="cache that hook at every step"):
        vw.view_data(clean, cache, saes=[vw.FeatureSelection(sae, "decoder.blocks.1.hook_mlp_out")])
    with pytest.raises(ValueError, match="is an attention pattern"):
        vw.view_data(clean, cache, saes=[vw.FeatureSelection(sae, "decoder.blocks.1.attn.hook_pattern")])
    narrow = type(sae)(type(sae.cfg)(d_in=64, d_sae=8, k=2))  # an SAE of another model's width
    with pytest.raises(ValueError, match="has 128 features per position and the SAE reads 64"):
        vw.view_data(clean, cache, saes=[vw.FeatureSelection(narrow, SAE_HOOK)])


def test_topk_recorder_keeps_the_recorded_logits_topk(hm):
    ids, mask = hm.to_tokens(CLEAN[:1])
    recorder = vw.TopKRecorder(k=5)
    torch.manual_seed(0)
    traj = hm.run_with_hooks(
        ids, fwd_hooks=[(vw.LOGITS_HOOK, recorder)], attention_mask=mask, record_logits=True, max_denoising_steps=3
    )
    recorded = recorder.topk()[0]
    assert recorded.ids.shape == (traj.block(0).n_steps, 1, traj.canvas_length, 5)
    reference = softmax(traj.stack("logits"))
    assert np.abs(np.take_along_axis(reference, recorded.ids.numpy(), -1) - recorded.probs.numpy()).max() < 1e-6
    assert np.allclose(np.sort(reference, -1)[..., ::-1][..., :5], recorded.probs.numpy(), atol=1e-6)
    traj_without_logits = dataclasses.replace(
        traj,
        blocks=[
            dataclasses.replace(traj.block(0), steps=[dataclasses.replace(s, logits=None) for s in traj.block(0).steps])
        ],
    )
    data = vw.view_data(traj_without_logits, topk=recorder.topk())
    assert data["blocks"][0]["topk"]["p"] == vw.quantise(recorded.probs, vw.P_SCALE)


def test_the_page_fetches_nothing(run):
    """No URL a browser would fetch: no http(s), no src / href, no url(), fetch, XHR or import; and a
    token string that looks like a URL is escaped in the data (still the same string once parsed)."""
    clean, _, _, page = run

    class UrlTokens:  # a tokenizer whose pieces are URLs
        def convert_ids_to_tokens(self, i):
            return f"https://example.com/{i}</script>"

    odd = vw.view_html(clean, tokenizer=UrlTokens())
    for text in (page, odd):
        assert not re.search(r"https?://|\bsrc\s*=|\bhref\s*=|url\(|fetch\(|XMLHttpRequest|WebSocket|\bimport\b", text)
        assert text.count("</script>") == 2
    assert page_data(odd)["strings"][0].startswith("https://example.com/")


def test_show_builds_the_page_only_when_displayed(run):
    clean, cache, _, _ = run
    view = vw.show(clean, cache, title="notebook")
    assert isinstance(view, vw.TrajectoryView)
    shown = view._repr_html_()
    srcdoc = re.match(r'<iframe srcdoc="(.*)" style=', shown, re.S).group(1)
    assert html.unescape(srcdoc) == vw.view_html(clean, cache, title="notebook")


# ------------------------------------------------------------------------------------------ command
@pytest.fixture(scope="module")
def saved(run, sae, tmp_path_factory):
    clean, cache, sweep, _ = run
    folder = tmp_path_factory.mktemp("view")
    clean.save(folder / "run.trajectory.safetensors")
    cache.save(folder / "run.safetensors")
    sae.save_model(folder / "sae")  # SAELens's format, as `diffinterp sae train` writes
    summary = {"axes": sweep.axes, "restored_fraction": sweep.mean(normalised=True).tolist(), "sweep": "step-layer"}
    (folder / "patching.json").write_text(json.dumps(summary))
    return folder


def test_view_command_writes_one_page(saved, capsys):
    out = saved / "page" / "view.html"
    rc = main(["view", str(saved / "run.trajectory.safetensors"), "--cache", str(saved / "run.safetensors"),
               "--patching", str(saved / "patching.json"), "--model", "toy4", "--out", str(out)])  # fmt: skip
    assert rc == 0
    assert f"wrote {out}" in capsys.readouterr().out
    data = page_data(out.read_text())
    block = data["blocks"][0]
    assert block["topk"] and block["lens"] and block["attention"] and len(data["patching"]) == 1
    assert data["strings"][block["argmax"][0]] != f"#{data['ids'][block['argmax'][0]]}"  # the model's tokens
    assert [p.name for p in out.parent.iterdir()] == ["view.html"]  # written atomically: no temporary left


def test_view_command_shows_sae_features(saved, run, capsys):
    out = saved / "sae-page.html"
    args = ["view", str(saved / "run.trajectory.safetensors"), "--cache", str(saved / "run.safetensors"),
            "--model", "toy4", "--sae", str(saved / "sae"), "--out", str(out)]  # fmt: skip
    assert main([*args, "--features", ",".join(map(str, SAE_FEATURES))]) == 0
    shown = page_data(out.read_text())["blocks"][0]["features"]
    expected = page_data(run[3])["blocks"][0]["features"]  # the panels view_data built from the same SAE
    assert [p["name"] for p in shown] == [f"sae: {SAE_HOOK}"] * len(SAE_FEATURES)
    assert [{**p, "name": None} for p in shown] == [{**p, "name": None} for p in expected]
    assert main([*args, "--top-features", "2"]) == 0
    assert len(page_data(out.read_text())["blocks"][0]["features"]) == 2
    capsys.readouterr()
    assert main([*args, "--features", "3,x"]) == 2
    assert "--features takes comma-separated feature indices" in capsys.readouterr().err
    no_cache = ["view", str(saved / "run.trajectory.safetensors"), "--model", "toy4", "--sae", str(saved / "sae")]
    assert main([*no_cache, "--out", str(out)]) == 2
    assert "--sae reads the SAE's hook from the run's cache: give --cache" in capsys.readouterr().err
    assert main([*args[:-4], "--sae", str(saved), "--out", str(out)]) == 2
    assert "is not an SAE folder (no cfg.json)" in capsys.readouterr().err


def test_view_command_errors_are_clear(saved, tmp_path, capsys):
    trajectory, cache, patching = (str(saved / name) for name in ("run.trajectory.safetensors", "run.safetensors",
                                                                  "patching.json"))  # fmt: skip
    assert main(["view", str(tmp_path / "missing.safetensors")]) == 2
    assert "diffinterp view: error: no trajectory at" in capsys.readouterr().err
    assert main(["view", trajectory, "--model", "toy4", "--patching", cache]) == 2
    assert "is not a JSON patching file" in capsys.readouterr().err
    tiny = di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(vocab_size=64), seed=0))  # canvas 8
    torch.manual_seed(0)
    other = tiny.generate(torch.tensor([[5, 6]]), max_new_tokens=8, max_denoising_steps=2)
    other.save(tmp_path / "other.safetensors")
    page = str(tmp_path / "v.html")
    assert main(["view", str(tmp_path / "other.safetensors"), "--model", "toy4", "--out", page]) == 2
    err = capsys.readouterr().err
    assert "diffinterp view: error: the trajectory's canvas has 8 positions, the model 'toy4''s 16" in err
    assert not (tmp_path / "v.html").exists()
    before = (saved / "run.trajectory.safetensors").read_bytes()
    for out in (trajectory, cache, patching):  # the page never replaces one of its inputs
        assert (
            main(["view", trajectory, "--cache", cache, "--patching", patching, "--model", "toy4", "--out", out]) == 2
        )
        assert "is given twice" in capsys.readouterr().err
    assert (saved / "run.trajectory.safetensors").read_bytes() == before
    wrong = str(tmp_path / "other.safetensors")  # a trajectory given as the cache
    assert main(["view", trajectory, "--model", "toy4", "--cache", wrong, "--out", str(tmp_path / "c.html")]) == 2
    assert "diffinterp view: error:" in capsys.readouterr().err and not (tmp_path / "c.html").exists()


def test_patch_save_runs_gives_view_the_run_its_heatmap_refers_to(tmp_path, capsys):
    out = tmp_path / "patch"
    rc = main(["patch", "--clean", CLEAN[1], "--corrupt", CORRUPT[1], "--sweep", "step-position", "--mode", "step",
               "--max-denoising-steps", "3", "--save-runs", "--model", "toy4", "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    page = tmp_path / "patch.html"
    rc = main(["view", str(out / "clean.trajectory.safetensors"), "--cache", str(out / "clean.cache.safetensors"),
               "--patching", str(out / "patching.json"), "--model", "toy4", "--out", str(page)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    data = page_data(page.read_text())
    block, panel = data["blocks"][0], data["patching"][0]
    assert block["topk"] is not None and block["lens"] is not None  # the saved run has logits and resid_post
    assert panel["axes"] == [["step", [0, 1, 2]], ["position", list(range(data["canvas"]))]]
    assert block["steps"] == 3
    saved = json.loads((out / "patching.json").read_text())
    assert panel["values"] == [None if v != v else round(v, 4) for row in saved["restored_fraction"] for v in row]


def test_run_record_logits_keeps_them(tmp_path):
    out = tmp_path / "run.safetensors"
    assert main(["run", "--prompt", CLEAN[0], "--cache", "decoder.hook_embed", "--record-logits",
                 "--max-denoising-steps", "2", "--model", "toy4", "--out", str(out)]) == 0  # fmt: skip
    trajectory = di.Trajectory.load(tmp_path / "run.trajectory.safetensors")
    logits = trajectory.stack("logits")  # raises if they were not recorded
    assert logits.shape[:3] == (trajectory.block(0).n_steps, 1, trajectory.canvas_length)


# ------------------------------------------------------------------------------------------ browser
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    candidates = [os.environ.get("DIFFINTERP_BROWSER")] + [shutil.which(name) for name in BROWSERS]
    return next((path for path in candidates if path and os.path.exists(path)), None)


@pytest.fixture(scope="module")
def browser():
    executable = find_browser()
    if executable is None:
        pytest.skip(
            "no Chromium installed (apt-get install chromium, or set DIFFINTERP_BROWSER): browser tests skipped"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the Playwright driver is not installed (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, run, tmp_path_factory):
    """The page opened from file://, with what it logged and requested."""
    path = tmp_path_factory.mktemp("page") / "view.html"
    path.write_text(run[3])
    tab = browser.new_page(viewport={"width": 1280, "height": 1000})
    tab.errors, tab.requests = [], []
    tab.on("console", lambda message: tab.errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.on("request", lambda request: tab.requests.append(request.url))
    tab.goto(path.as_uri())
    tab.wait_for_selector("#canvas .tok")
    yield tab
    tab.close()


def shown_tokens(page) -> list[str]:
    return page.locator("#canvas .tok").all_text_contents()


def test_page_renders_without_errors_and_fetches_only_itself(page):
    assert page.errors == []
    assert len(page.requests) == 1 and page.requests[0].startswith("file://")
    assert page.title() == "test run"


def test_canvas_shows_the_selected_steps_tokens_and_the_scrubber_moves_on(hm, run, page):
    clean = run[0]
    assert shown_tokens(page) == labels(hm, clean.step(0, 0).argmax[0])
    for step in (1, 2):
        page.locator("#step").fill(str(step))
        assert shown_tokens(page) == labels(hm, clean.step(0, step).argmax[0])
        assert page.inner_text("#step-label").startswith(f"step {step} / {STEPS - 1}")
    page.select_option("#row", "1")
    page.select_option("#field", "canvas_in")
    assert shown_tokens(page) == labels(hm, clean.step(0, 2).canvas_in[1])
    page.select_option("#row", "0")
    page.select_option("#field", "argmax")
    accepted = page.locator("#canvas .tok.acc").evaluate_all("els => els.map(e => +e.dataset.pos)")
    assert accepted == clean.step(0, 2).accepted[0].nonzero().flatten().tolist()
    assert page.errors == []


def test_hover_shows_the_top_k_of_the_recorded_logits(run, page):
    clean = run[0]
    page.locator("#step").fill("3")
    position = 7
    page.locator(f'#canvas .tok[data-pos="{position}"]').hover()
    rows = page.locator("#tooltip tr.topk-row")
    assert rows.count() == vw.TOP_K
    ids = [int(i) for i in rows.evaluate_all("els => els.map(e => e.dataset.id)")]
    shown = [float(t) for t in page.locator("#tooltip tr.topk-row .tk-p").all_text_contents()]
    reference = softmax(clean.step(0, 3).logits[0, position])
    assert np.allclose(shown, np.sort(reference)[::-1][: vw.TOP_K], atol=1e-4)  # 4 decimals shown
    assert np.allclose(reference[ids], shown, atol=1e-4)
    assert page.locator("#tooltip tr.sc-row").count() == vw.TOP_K  # the self-conditioning view beside it
    page.mouse.move(5, 5)


def test_clicking_a_position_shows_its_logit_lens_and_attention(hm, run, page):
    cache = run[1]
    page.locator("#step").fill("2")
    position = 6
    page.locator(f'#canvas .tok[data-pos="{position}"]').click()
    reference = lz.logit_lens(hm, cache)
    cells = page.locator("#lens td")
    n_layers = len(reference.layers)
    assert cells.count() == n_layers * STEPS
    for layer in reference.layers:
        shown = page.locator(f'#lens td[data-layer="{layer}"]').all_text_contents()
        assert shown == [t[:8] for t in labels(hm, reference.argmax[:, layer, 0, position])]
    heads = page.locator("#attention .head")
    assert heads.count() == hm.text_config.num_attention_heads
    layer = int(page.locator("#attn-layer").input_value())
    assert layer == n_layers - 1
    pattern = cache[f"decoder.blocks.{layer}.attn.hook_pattern", 2][0, :, position]  # [H, K]
    tops = [int(t) for t in page.locator("#attention .head .top").evaluate_all("els => els.map(e => e.dataset.top)")]
    for head, key in enumerate(tops):
        assert pattern[head, key] >= pattern[head].max() - 1 / 255
    assert page.errors == []


def test_patching_cells_link_to_their_step_and_layer(page):
    page.locator('#canvas .tok[data-pos="3"]').click()  # a position, so that the lens shows
    heatmap = page.locator("#patching canvas").first
    left, top, cw, ch = heatmap.evaluate("c => [+c.dataset.left, +c.dataset.top, +c.dataset.cw, +c.dataset.ch]")
    step, layer = 4, 1  # rows are steps, columns layers
    heatmap.click(position={"x": left + (layer + 0.5) * cw, "y": top + (step + 0.5) * ch})
    assert page.locator("#step").input_value() == str(step)
    assert page.locator("#attn-layer").input_value() == str(layer)
    assert page.locator("#lens tr.sel th").first.inner_text() == f"L{layer}"


def test_sae_feature_heatmap_shows_the_selected_prompt_and_links_to_step_and_position(hm, run, sae, page):
    clean, cache = run[0], run[1]
    page.select_option("#row", "1")
    options = page.locator("#feature option").all_text_contents()
    assert options == [f"{SAE_HOOK} · feature {f}" for f in SAE_FEATURES]
    page.select_option("#feature", "1")
    assert page.locator("#features h3").inner_text() == f"{SAE_HOOK} · feature {SAE_FEATURES[1]}"
    heatmap = page.locator("#features canvas")
    left, top, cw, ch = heatmap.evaluate("c => [+c.dataset.left, +c.dataset.top, +c.dataset.cw, +c.dataset.ch]")
    step, position = 3, 5  # rows are steps, columns positions
    heatmap.hover(position={"x": left + (position + 0.5) * cw, "y": top + (step + 0.5) * ch})
    with torch.no_grad():
        value = float(sae.encode(cache[SAE_HOOK, step].float())[1, position, SAE_FEATURES[1]])
    tip = page.inner_text("#tooltip")
    assert tip.startswith(f"step {step}, position {position}: ")
    assert abs(float(tip.split(": ")[1].split(" ")[0]) - value) <= 1e-3 * max(1.0, abs(value))
    assert tip.endswith("argmax " + labels(hm, clean.step(0, step).argmax[1, position : position + 1])[0])
    heatmap.click(position={"x": left + (position + 0.5) * cw, "y": top + (step + 0.5) * ch})
    assert page.locator("#step").input_value() == str(step)
    assert page.locator("#canvas .tok.sel").evaluate("e => +e.dataset.pos") == position
    page.select_option("#row", "0")
    assert page.errors == []


def test_play_steps_through_the_run(page):
    page.locator("#step").fill("0")
    page.click("#play")
    from playwright.sync_api import expect  # waits without eval (the page's CSP forbids it)

    expect(page.locator("#step")).to_have_value("1")
    page.click("#play")
    assert page.errors == []


def test_canvases_and_id_labels_of_a_tokenizer_free_model(browser, tmp_path):
    """A random tiny model without a tokenizer, two canvases: the canvas selector shows each block's
    tokens, labelled ``#id``."""
    hm = di.HookedDiffusionGemma(di.tiny_model(di.tiny_config(), seed=0))
    ids = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    traj = hm.generate(ids, max_new_tokens=2 * hm.config.canvas_length, max_denoising_steps=3, record_logits=True)
    assert len(traj.blocks) == 2
    path = vw.write_view(tmp_path / "two.html", traj, hm=hm)
    tab = browser.new_page()
    errors = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(path.as_uri())
    tab.select_option("#block", "1")
    tab.select_option("#row", "1")
    tab.locator("#step").fill("2")
    assert shown_tokens(tab) == [f"#{i}" for i in traj.step(1, 2).argmax[1].tolist()]
    assert "no logit lens" in tab.inner_text("#lens") and "no attention" in tab.inner_text("#attention")
    assert errors == []
    tab.close()


def test_screenshot_is_not_blank(page):
    from PIL import Image

    page.evaluate("() => window.scrollTo(0, 0)")
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")  # the viewport: canvas, grid, lens
    colours = image.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 100
    assert max(count for count, _ in colours) < 0.9 * image.width * image.height  # not one flat colour
