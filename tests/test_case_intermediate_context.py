"""Intermediate-context reasoning: transient-token metrics on hand-made trajectories, the ablation's
exactness on the bundled model, and the study end to end (random real-pattern model and bundled)."""

import json
import random

import pytest
import torch

import diffinterp as di
from diffinterp import studies
from diffinterp.phenomena import transient as tr

PAD, EOS = 0, 1
SPECIAL = (EOS, PAD)


def hand_made():
    """2 rows, 4 steps, 3 positions. Row 0 finishes after 4 active steps, row 1 after 3.

    Row 0: pos 0 argmax 5,5,7,7 (final 7): token 5 transient at steps 0-1, accepted at step 0 (canvas kind).
           pos 1 argmax 9 at step 0 (final 8), not accepted: argmax kind; canvas_out there is noise 4
           (not accepted, so not transient). pos 2: eos throughout (special, never transient).
    Row 1: pos 0 argmax 2, 3, 2 (final 2): 3 at step 1 is argmax kind (not accepted; the canvas holds
           noise 10). pos 1: pad at step 0 (special). Step 3 is after the row stopped.
    """
    argmax = torch.tensor(
        [
            [[5, 9, EOS], [2, PAD, 6]],
            [[5, 8, EOS], [3, 6, 6]],
            [[7, 8, EOS], [2, 6, 6]],
            [[7, 8, EOS], [2, 6, 6]],
        ]
    )
    canvas_out = argmax.clone()
    canvas_out[0, 0, 1] = 4  # a renoising draw at a non-accepted position
    accepted = torch.ones_like(argmax, dtype=torch.bool)
    accepted[0, 0, 1] = False
    accepted[1, 0, 0] = False  # 5 is argmax only at step 1, but it was accepted at step 0
    canvas_out[1, 0, 0] = 11
    accepted[1, 1, 0] = False
    canvas_out[1, 1, 0] = 10
    active = torch.tensor([[True, True], [True, True], [True, True], [True, False]])
    final = torch.tensor([[7, 8, EOS], [2, 6, 6]])
    return argmax, canvas_out, accepted, active, final


def test_masks_and_tokens_on_a_hand_made_trajectory():
    argmax, canvas_out, accepted, active, final = hand_made()
    canvas, arg = tr.transient_masks(argmax, canvas_out, accepted, active, final, SPECIAL)
    assert canvas.nonzero().tolist() == [[0, 0, 0]]  # the accepted 5; the noise 4 and eos are not
    assert arg.nonzero().tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 1, 0]]
    found = tr.find_transient(argmax, canvas_out, accepted, active, final, SPECIAL)
    summary = [(t.row, t.pos, t.token, t.first, t.last, t.kind, t.final) for t in found]
    assert summary == [(0, 0, 5, 0, 1, "canvas", 7), (0, 1, 9, 0, 0, "argmax", 8), (1, 0, 3, 1, 1, "argmax", 2)]
    # reading steps: first+1..last+1, cut at the row's active steps
    assert found[0].reading_steps(4) == (1, 2)
    assert found[2].reading_steps(3) == (2,)
    assert found[2].reading_steps(2) == ()


def test_without_special_ids_eos_can_be_transient_and_shapes_are_checked():
    argmax, canvas_out, accepted, active, final = hand_made()
    final = final.clone()
    final[0, 2] = 6  # eos in the canvas but 6 in the end: transient only when eos counts as content
    assert not any(t.token == EOS for t in tr.find_transient(argmax, canvas_out, accepted, active, final, SPECIAL))
    assert any(t.token == EOS for t in tr.find_transient(argmax, canvas_out, accepted, active, final, ()))
    with pytest.raises(ValueError, match="active must be"):
        tr.transient_masks(argmax, canvas_out, accepted, active[:, :1], final)


def test_whole_canvas_reference_takes_every_content_token_of_the_step():
    argmax, canvas_out, accepted, active, _ = hand_made()
    step0 = tr.content_at_step(argmax, canvas_out, accepted, active, 0, SPECIAL)
    got = [(t.row, t.pos, t.token, t.kind) for t in step0]
    assert got == [(0, 0, 5, "canvas"), (0, 1, 9, "argmax"), (1, 0, 2, "canvas"), (1, 2, 6, "canvas")]
    step2 = tr.content_at_step(argmax, canvas_out, accepted, active, 2, SPECIAL)
    assert {t.row for t in step2} == {0}  # row 1 stops at step 2: nothing reads its step-2 canvas


def test_rate_per_step_counts_only_active_rows():
    argmax, canvas_out, accepted, active, final = hand_made()
    canvas, arg = tr.transient_masks(argmax, canvas_out, accepted, active, final, SPECIAL)
    assert tr.transient_rate_per_step(arg, active) == [1.0, 1.0, 0.0, 0.0]  # 2/2, 2/2, 0/2, 0/1
    assert tr.transient_rate_per_step(canvas, active) == [0.5, 0.0, 0.0, 0.0]
    assert tr.transient_rate_per_step(canvas, torch.zeros_like(active)) == [None] * 4


def test_roles_and_annotation():
    assert tr.token_role(5, prompt=[3, 5], answer=[5], output=[]) == "answer"
    assert tr.token_role(3, prompt=[3, 5], answer=[5], output=[]) == "prompt"
    assert tr.token_role(9, prompt=[3], answer=None, output=[9]) == "output"
    assert tr.token_role(9, prompt=[3], answer=None, output=[]) == "other"
    t = tr.TransientToken(1, 0, 0, 4, 0, 0, "argmax", 2)
    assert tr.annotate([t], [[], [4]], [[], []])[0].role == "prompt"
    assert [tr.char_class(p) for p in ("7", "q", "=", None)] == ["digit", "letter", "symbol", ""]
    assert tr.count_by([t, t], "kind") == {"argmax": 2}


def test_control_picks_a_non_transient_content_position_of_the_same_channel():
    argmax, canvas_out, accepted, active, final = hand_made()
    canvas, arg = tr.transient_masks(argmax, canvas_out, accepted, active, final, SPECIAL)
    found = tr.find_transient(argmax, canvas_out, accepted, active, final, SPECIAL)
    here = canvas | arg
    # row 0 at step 0: pos 0 and 1 transient, pos 2 eos -> no content position; eos only as a fallback
    assert tr.control_for(found[0], argmax, canvas_out, accepted, here, SPECIAL, random.Random(0)) is None
    fallback = tr.control_for(found[0], argmax, canvas_out, accepted, here, SPECIAL, random.Random(0), (EOS,))
    assert (fallback.pos, fallback.token, fallback.role, fallback.kind) == (2, EOS, "control:fallback", "canvas")
    # row 1 at step 1: pos 0 transient, pos 1 and 2 hold 6 = their final token
    control = tr.control_for(found[2], argmax, canvas_out, accepted, here, SPECIAL, random.Random(0))
    assert control.pos in (1, 2) and control.token == 6 and control.first == 1 and control.role == "control"


def test_noise_replacement_and_outcome_flags():
    rng = random.Random(0)
    draws = {tr.noise_replacement(3, 6, rng, avoid=(0, 1)) for _ in range(200)}
    assert draws == {2, 4, 5}
    with pytest.raises(ValueError, match="no replacement"):
        tr.noise_replacement(0, 2, rng, avoid=(1,))
    flags = tr.outcome_flags([[1, 2], [3], [4]], [[1, 2], [5], [4]], [True, True, False], [True, False, False])
    assert flags == {"changed": [False, True, False], "broke": [False, True, False]}
    assert tr.outcome_flags([[1]], [[2]], None, None) == {"changed": [True], "broke": [None]}
    t = tr.TransientToken(0, 0, 1, 4, 2, 3, "argmax", 5)
    assert tr.ablation_for(t, 10, 7) == tr.Ablation(0, 0, 1, 4, (3, 4), 7, embed=False)


@pytest.fixture(scope="module")
def bundled():
    return di.load_model("toy4")


@pytest.fixture(scope="module")
def arith_batch(bundled):
    ps = studies.prompt_set(bundled, "arith", 6)
    return next(studies.run_prompt_set(bundled, ps, record_logits=True))


def _capture(name, store):
    def hook(x, hook):
        if hook.step is not None:
            store[hook.step] = x.detach().clone()

    return (name, hook)


def test_ablation_is_exact_and_removes_the_token(bundled, arith_batch):
    hm, batch = bundled, arith_batch
    trajectory, kwargs = batch.trajectory, studies.rerun_kwargs(batch)
    embed = hm.model.model.decoder.embed_tokens
    scale = embed.embed_scale.to(embed.weight.dtype)
    entropy = trajectory.stack("entropy")[0]
    row, pos = divmod(int(entropy.argmax()), entropy.shape[1])  # the least certain position at step 0
    token = int(trajectory.stack("argmax")[0, row, pos])
    canvas_token = int(trajectory.stack("canvas_in")[1, row, pos])
    clean_soft, clean_embed, soft, emb = {}, {}, {}, {}
    hm.run_with_hooks(
        trajectory.prompt_ids,
        fwd_hooks=[_capture("decoder.sc.hook_soft_embed", clean_soft), _capture("decoder.hook_embed", clean_embed)],
        **kwargs,
    )
    # a no-op (replacement = the canvas token, removing a token of ~zero probability) changes nothing
    rare = int(trajectory.step(0, 0).logits[row, pos].argmin())
    noop = tr.Ablation(row, 0, pos, canvas_token, (1,), canvas_token, self_conditioning=False)
    hooks = tr.ablation_hooks(hm, trajectory, [tr.Ablation(row, 0, pos, rare, (1,), rare), noop])
    run = hm.run_with_hooks(
        trajectory.prompt_ids, fwd_hooks=[*hooks, _capture("decoder.sc.hook_soft_embed", soft)], **kwargs
    )
    assert torch.equal(run.sequences, trajectory.sequences)
    assert torch.allclose(soft[1], clean_soft[1], atol=1e-5)
    # the real ablation: the canvas embedding becomes the replacement's, the token's mass leaves the signal
    replacement = (canvas_token + 1) % hm.config.text_config.vocab_size
    ablation = tr.Ablation(row, 0, pos, token, (1,), replacement)
    ablation_canvas = tr.Ablation(row, 0, pos, canvas_token, (1,), replacement, self_conditioning=False)
    hooks = tr.ablation_hooks(hm, trajectory, [ablation, ablation_canvas])
    capture = [_capture("decoder.sc.hook_soft_embed", soft), _capture("decoder.hook_embed", emb)]
    hm.run_with_hooks(trajectory.prompt_ids, fwd_hooks=[*hooks, *capture], **kwargs)
    assert torch.equal(emb[1][row, pos], embed.weight[replacement] * scale)
    other = (pos + 1) % trajectory.canvas_length
    assert torch.equal(emb[1][row, other], clean_embed[1][row, other])
    processed = trajectory.block(0).runtime.logits_processor(
        None, trajectory.step(0, 0).logits, cur_step=torch.tensor(trajectory.step(0, 0).hf_step)
    )
    p = processed[row, pos].softmax(-1)[token]
    assert 0.01 < p < 0.99, "the least certain position should have a non-trivial argmax probability"
    expected = (clean_soft[1][row, pos] - p * embed.weight[token] * scale) / (1 - p)  # renormalised without the token
    assert torch.allclose(soft[1][row, pos], expected, atol=1e-3)
    assert not torch.allclose(soft[1][row, pos], clean_soft[1][row, pos], atol=1e-3)


def test_ablation_rejects_bottlenecked_runs_and_step_zero(bundled, arith_batch):
    trajectory = arith_batch.trajectory
    with pytest.raises(ValueError, match="reading steps start at 1"):
        tr.ablation_hooks(bundled, trajectory, [tr.Ablation(0, 0, 0, 5, (0,), 6)])
    trajectory.bottleneck, saved = "argmax", trajectory.bottleneck
    try:
        with pytest.raises(ValueError, match="continuous"):
            tr.ablation_hooks(bundled, trajectory, [])
    finally:
        trajectory.bottleneck = saved


def _well_formed(value):
    if isinstance(value, dict):
        if "value" in value and "ci_low" in value:
            v = value["value"]
            assert v is None or value["ci_low"] - 1e-9 <= v <= value["ci_high"] + 1e-9
            assert v is None or 0 <= v <= 1
        for item in value.values():
            _well_formed(item)


def test_study_runs_on_the_real_pattern_random_model(tmp_path):
    from case_studies import intermediate_context

    hm = di.HookedDiffusionGemma(di.tiny_model(di.real_pattern_tiny_config()))
    metrics = intermediate_context.run(hm, n=3, out_dir=tmp_path, max_denoising_steps=4, max_rounds=2)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["summary"] == metrics["summary"] and saved["summary"]["metric"] == "changed_of_rows_with_transient"
    assert set(saved["per_task"]) == {"random"} and saved["per_task"]["random"]["accuracy"] is None
    assert saved["per_task"]["random"]["joint"]["depends_of_correct"] is None
    for name in saved["figures"]:
        assert (tmp_path / name).stat().st_size > 0
    assert "dependence.png" in saved["figures"] and "transient_per_step.png" in saved["figures"]
    _well_formed(saved)


def test_study_on_the_bundled_model_agrees_with_a_recount(bundled, tmp_path):
    from case_studies import intermediate_context

    metrics = intermediate_context.run(bundled, n=10, tasks=("arith",), out_dir=tmp_path, max_rounds=2)
    result = metrics["per_task"]["arith"]
    _well_formed(metrics)
    batch = next(studies.run_prompt_set(bundled, studies.prompt_set(bundled, "arith", 10), record_logits=True))
    recount = tr.trajectory_transient(batch.trajectory, studies.special_ids(bundled))
    assert result["transient_tokens"] == len(recount)
    assert result["rows_with_transient"]["k"] == len({t.row for t in recount})
    assert result["accuracy"]["k"] == int(batch.correct.sum())
    joint = result["joint"]
    assert joint["depends_of_correct"]["n"] == int(batch.correct.sum())
    assert joint["depends_of_correct"]["k"] <= joint["changed_of_rows_with_transient"]["k"]
    assert sum(result["by_kind"].values()) == len(recount)


def test_single_rates_and_pooled_step_rates():
    records = [
        {"control": False, "kind": "canvas", "role": "answer", "changed": True, "broke": None},
        {"control": False, "kind": "canvas", "role": "prompt", "changed": False, "broke": False},
        {"control": False, "kind": "argmax", "role": "prompt", "changed": True, "broke": True},
        {"control": True, "kind": "canvas", "role": "control", "changed": False, "broke": False},
    ]
    rates = tr.single_rates(records)
    assert (rates["by_kind"]["canvas"]["changed"]["k"], rates["by_kind"]["canvas"]["changed"]["n"]) == (1, 2)
    assert rates["by_kind"]["canvas"]["broke_of_correct"]["n"] == 1  # the row that was not correct is left out
    assert rates["by_role"]["prompt"]["broke_of_correct"]["value"] == 0.5
    assert set(rates["control_by_kind"]) == {"canvas"} and rates["control_by_kind"]["canvas"]["changed"]["k"] == 0
    pooled = tr.StepRates()
    argmax, canvas_out, accepted, active, final = hand_made()
    pooled.add(tr.transient_masks(argmax, canvas_out, accepted, active, final, SPECIAL), active)
    short = torch.zeros(2, 1, 3, dtype=torch.bool)
    short[0, 0, :2] = True  # a second batch: one row, two steps, two argmax transient tokens at step 0
    pooled.add((torch.zeros_like(short), short), torch.ones(2, 1, dtype=torch.bool))
    # argmax step 0: (2 + 2) tokens / (2 + 1) rows; step 1: 2 / 3; steps 2, 3: only the first batch
    assert pooled.rates()["argmax"] == pytest.approx([4 / 3, 2 / 3, 0.0, 0.0])
    assert pooled.rates()["canvas"] == pytest.approx([1 / 3, 0.0, 0.0, 0.0])


def test_hidden_value_trace_on_gold_agrees_with_a_recount():
    from case_studies import intermediate_context as ic
    from diffinterp.organisms.families import gold
    from diffinterp.organisms.task import Example

    hm = di.load_model("gold")
    prompts = studies.prompt_set(hm, "gold", 8)
    batch = next(studies.run_prompt_set(hm, prompts, record_logits=True))
    trace = ic.hidden_value_trace(hm, [batch])
    traj = batch.trajectory
    argmax, accepted, active = (traj.stack(f).cpu() for f in ("argmax", "accepted", "active"))
    logits = traj.stack("logits").float().cpu()
    digit = {d: hm.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    written, by_settle, settles, step0 = [], [], [], []
    for row, (text, answer) in enumerate(zip(prompts.texts, prompts.answers, strict=True)):
        truth = gold.truth(Example("gold", text, answer))
        last = max(s for s in range(argmax.shape[0]) if active[s, row])
        for p, value in zip(truth["hidden"], truth["hidden_values"], strict=True):
            steps = [s for s in range(last) if argmax[s, row, p] == digit[value]]
            written.append(bool(steps))
            for q in truth["needed_by"][p]:  # settle: from here on the final token, accepted (the last step counts)
                settle = next(
                    s
                    for s in range(last + 1)
                    if all(argmax[t, row, q] == argmax[last, row, q] and (accepted[t, row, q] or t == last)
                           for t in range(s, last + 1))
                )  # fmt: skip
                by_settle.append(bool(steps) and steps[0] <= settle)
                settles.append(settle)
            step0.append(float(torch.softmax(logits[0, row, p], -1)[digit[value]]))
    assert trace["hidden_terms"] == len(written) > 0 and by_settle
    assert trace["written_before_last_step"]["k"] == sum(written)
    assert (trace["written_by_needed_settle"]["k"], trace["written_by_needed_settle"]["n"]) == (
        sum(by_settle),
        len(by_settle),
    )
    assert trace["needed_settle_step"]["value"] == pytest.approx(sum(settles) / len(settles))
    assert trace["value_digit_probability_by_step"]["0"]["value"] == pytest.approx(sum(step0) / len(step0))
    carry = next(studies.run_prompt_set(di.load_model("carry"), studies.prompt_set(hm, "carry", 2)))
    assert ic.hidden_terms(carry) is None  # a task that hides nothing has no trace
