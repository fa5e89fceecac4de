"""Non-chronological reasoning: settle steps, regions, orders, lens steps, corruption, end-to-end runs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import diffinterp as di
from case_studies import non_chronological as nc
from diffinterp import studies
from diffinterp.core.configs import real_pattern_tiny_config
from diffinterp.phenomena import settling as st


@pytest.fixture(scope="module")
def bundled():
    return di.load_model()


def ids(hm, text: str) -> list[int]:
    return [hm.tokenizer.convert_tokens_to_ids(t) for t in text.split()]


# ------------------------------------------------------------------------------- settle steps
def test_settle_steps_on_a_hand_made_trajectory():
    # row 0 runs all 4 steps; row 1 stops after step 2 (its step-3 records must be ignored)
    argmax = torch.tensor(
        [
            [[5, 7, 6, 3], [1, 4, 8, 8]],
            [[5, 6, 6, 3], [2, 4, 8, 8]],
            [[5, 6, 6, 3], [2, 4, 8, 8]],
            [[5, 6, 6, 3], [9, 4, 8, 0]],
        ]
    )
    accepted = torch.tensor(
        [
            [[1, 1, 1, 0], [1, 1, 0, 1]],
            [[1, 1, 0, 0], [1, 1, 1, 0]],
            [[1, 1, 1, 0], [0, 1, 1, 1]],
            [[1, 1, 0, 0], [1, 0, 1, 1]],
        ]
    ).bool()
    active = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]]).bool()
    settle = st.settle_steps(argmax, accepted, active)
    # row 0: stable from 0; argmax changes at 1; unaccepted at 1 then accepted at 2 (3 = last counts as
    #        accepted); never accepted -> settles at the last step
    # row 1 (last step 2): argmax final from 1, its step-2 acceptance is implied by being last; stable
    #        from 0; unaccepted at 0 then accepted; accepted at 0 then not at 1 -> settles at 2
    assert settle.tolist() == [[0, 1, 2, 3], [1, 0, 1, 2]]
    assert st.last_steps(active).tolist() == [3, 2]
    assert st.final_tokens(argmax, st.last_steps(active)).tolist() == [[5, 6, 6, 3], [2, 4, 8, 8]]
    # without ``active`` every row is taken to run all steps: row 1's final tokens become step 3's
    assert st.settle_steps(argmax, accepted)[1].tolist() == [3, 0, 1, 3]
    with pytest.raises(ValueError, match="must match argmax"):
        st.settle_steps(argmax, accepted[:, :1])


def _designed(final: torch.Tensor, settle: torch.Tensor, n_steps: int, vocab: int = 64):
    """argmax / accepted [S, B, P] whose argmax is wrong before ``settle`` and final from it on."""
    steps = torch.arange(n_steps)[:, None, None]
    argmax = torch.where(steps < settle[None], (final[None] + 1) % vocab, final[None].expand(n_steps, -1, -1))
    return argmax, torch.ones_like(argmax, dtype=torch.bool)


def test_a_known_settling_order_gives_the_known_fractions(bundled):
    eos, pad = studies.special_ids(bundled)
    eq = bundled.tokenizer.convert_tokens_to_ids("=")
    text = "b = 7 c = 1 4 = 1 4 <eos> <pad> <pad> <pad> <pad> <pad>"
    final = torch.tensor([ids(bundled, text)] * 4)
    # positions: scratch 0..6 (before the last "=" at 7), dependency (c's value "1 4") 5..6, answer 8..9
    settle = torch.zeros(4, 16, dtype=torch.long)
    settle[:, 5:7] = torch.tensor([[1, 2], [0, 1], [1, 1], [0, 0]])  # dependency settles at 2, 1, 1, 0
    settle[:, 8:10] = torch.tensor([[0, 1], [1, 1], [2, 0], [0, 3]])  # answer settles at 1, 1, 2, 3
    argmax, accepted = _designed(final, settle, 5)
    assert torch.equal(st.settle_steps(argmax, accepted), settle)
    regions = st.find_regions(final, eos, pad, eq)
    assert regions.positions("answer", 0) == [8, 9] and regions.positions("dependency", 0) == [5, 6]
    assert regions.positions("scratch", 0) == list(range(7)) and regions.arith.all()
    answer = st.region_step(settle, regions.answer)
    order = st.settle_order(answer, st.region_step(settle, regions.dependency))
    assert order.tolist() == [-1, 0, 1, 1]
    fractions = st.order_fractions(order, torch.ones(4, dtype=torch.bool))
    assert (fractions["before"]["value"], fractions["tie"]["value"], fractions["after"]["value"]) == (0.25, 0.25, 0.5)
    assert fractions["before"]["ci_low"] < 0.25 < fractions["before"]["ci_high"]
    # the whole scratchpad settles with its latest token (the dependency); its first token at 0
    assert st.region_step(settle, regions.scratch).tolist() == [2, 1, 1, 0]
    assert st.region_step(settle, regions.scratch, "min").tolist() == [0, 0, 0, 0]


def test_regions_generic_fallback_and_malformed_arith(bundled):
    eos, pad = studies.special_ids(bundled)
    eq = bundled.tokenizer.convert_tokens_to_ids("=")
    rows = torch.tensor(
        [
            [10, 11, 12, eos, pad, pad],  # any vocabulary: answer = last content token
            ids(bundled, "b = 7 <eos> <pad> <pad>"),  # one '=': not an arith output -> generic
            [eos, pad, pad, pad, pad, pad],  # empty output: no regions
            [pad, 20, eos, 21, 22, pad],  # tokens after EOS are not content
        ]
    )
    regions = st.find_regions(rows, eos, pad, eq)
    assert regions.arith.tolist() == [False, False, False, False]
    assert regions.positions("answer", 0) == [2] and regions.positions("dependency", 0) == [0, 1]
    assert regions.positions("answer", 1) == [2] and regions.positions("scratch", 1) == [0, 1]
    assert regions.positions("answer", 2) == [] and st.region_step(torch.zeros(4, 6).long(), regions.answer)[2] == -1
    assert regions.positions("answer", 3) == [1] and regions.positions("dependency", 3) == []


# ------------------------------------------------------------------------------- lens helpers
def test_answer_lens_steps_finds_the_first_step_each_layer_reads_the_whole_answer():
    final = torch.tensor([[3, 4, 5]])
    answer = torch.tensor([[False, True, True]])
    lens = torch.zeros(4, 2, 1, 3, dtype=torch.long)  # [S, L, B, P], wrong everywhere
    lens[1, 1, 0] = torch.tensor([0, 4, 5])  # layer 1 reads the whole answer at step 1
    lens[2, 0, 0] = torch.tensor([0, 4, 9])  # layer 0 only half of it at step 2 ...
    lens[3, 0, 0] = torch.tensor([0, 4, 5])  # ... and all of it at step 3, past the row's last step
    assert st.answer_lens_steps(lens, final, answer, torch.tensor([3])).tolist() == [[3], [1]]
    assert st.answer_lens_steps(lens, final, answer, torch.tensor([2])).tolist() == [[-1], [1]]


def test_align_to_and_region_mean():
    values = torch.tensor([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]])  # [S=3, B=2]
    means, counts = st.align_to(values, torch.tensor([1, 0]), torch.tensor([2, 1]), [-1, 0, 1])
    # offset -1: row 0 step 0 (row 1 has no step -1); 0: steps 1 and 0; +1: steps 2 and 1
    assert counts.tolist() == [1, 2, 2]
    assert means.tolist() == [0.0, (1.0 + 10.0) / 2, (2.0 + 11.0) / 2]
    mean = st.region_mean(torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[True, False, True]]))
    assert mean.tolist() == [2.5]


# ------------------------------------------------------------------------------- causal helpers
def test_corrupt_tokens_and_outcomes():
    digits = list(range(4, 14))  # ids of 0..9
    assert st.corrupt_tokens(torch.tensor([4, 8, 13]), digits, 5).tolist() == [9, 13, 8]  # 0->5, 4->9, 9->4
    assert st.corrupt_tokens(torch.tensor([30, 9]), digits, 5).tolist() == [9, 4]  # outside the cycle -> cycle[5]
    with pytest.raises(ValueError, match="shift"):
        st.corrupt_tokens(torch.tensor([4]), digits, 10)
    assert st.outcome([5, 6], [5, 6], [5, 1]) == "unchanged"
    assert st.outcome([5, 1], [5, 6], [5, 1]) == "follows"
    assert st.outcome([5, 2], [5, 6], [5, 1]) == "other"
    assert st.outcome([5, 1], [5, 6], None) == "other"


def test_replace_positions_hook_edits_only_the_chosen_rows_steps_and_positions():
    replacement = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    hook = st.replace_positions_hook(replacement, torch.tensor([0, 2, 1]), torch.tensor([1, 2, -1]))
    x = torch.zeros(3, 3, 2)
    assert hook(x, SimpleNamespace(step=0, block=0)) is None
    out = hook(x, SimpleNamespace(step=1, block=0))
    assert out[0, 0].tolist() == [1.0, 1.0] and out.abs().sum() == 2  # row 0 at its step 1 only
    assert hook(x, SimpleNamespace(step=1, block=1)) is None  # other blocks untouched
    persistent = st.replace_positions_hook(replacement, torch.tensor([0, 2, 1]), torch.tensor([1, 2, -1]), persist=True)
    out = persistent(x, SimpleNamespace(step=2, block=0))
    assert out[0, 0].tolist() == [1.0, 1.0] and out[1, 2].tolist() == [2.0, 2.0] and out.abs().sum() == 6
    skip = st.replace_positions_hook(replacement, torch.tensor([0, 2, 1]), torch.tensor([1, 2, -1]), skip_zero=True)
    assert torch.equal(skip(x, SimpleNamespace(step=1, block=0)), x)  # all-zero signal left alone


def test_embedding_replacement_equals_running_the_corrupted_canvas(bundled):
    """The intervention at one step is exactly that step's forward on a canvas holding the corrupted token."""
    hm = bundled
    ps = studies.prompt_set(hm, "arith", 3)
    batch = next(studies.run_prompt_set(hm, ps, record_logits=True))
    step, position = 1, torch.tensor([5, 6, 2])
    canvas = batch.trajectory.step(0, step).canvas_in.clone()
    corrupt = st.corrupt_tokens(canvas[torch.arange(3), position], range(4, 14), 5)
    replacement = hm.model.model.decoder.embed_tokens(corrupt)
    hook = st.replace_positions_hook(replacement, position, torch.full((3,), step))
    traj = hm.run_with_hooks(ps.input_ids, fwd_hooks=[("decoder.hook_embed", hook)], record_logits=True,
                             **studies.rerun_kwargs(batch))  # fmt: skip
    kwargs = hm.step_inputs(batch.trajectory, 0, step)
    kwargs["decoder_input_ids"][torch.arange(3), position] = corrupt
    with torch.no_grad():
        direct = hm.model(**kwargs).logits
    torch.testing.assert_close(traj.step(0, step).logits, direct)
    assert torch.equal(traj.step(0, step - 1).logits, batch.trajectory.step(0, step - 1).logits)  # earlier: clean
    assert not torch.equal(traj.step(0, step).logits, batch.trajectory.step(0, step).logits)


# ------------------------------------------------------------------------------- end to end
def test_runs_unchanged_on_the_real_pattern_random_model(tmp_path):
    hm = di.HookedDiffusionGemma(di.tiny_model(real_pattern_tiny_config()))
    metrics = nc.run(hm, n=3, out_dir=tmp_path, max_denoising_steps=4)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["tasks"] == ["random"] and saved["n"] == 3 and saved["model"]["vocab_size"] == 200
    for name in saved["figures"]:
        assert (tmp_path / name).stat().st_size > 0
    fractions = saved["per_task"]["random"]["vs_dependency"]["all"]
    measured = [fractions[k]["value"] for k in ("before", "tie", "after")]
    assert all(v is None or 0 <= v <= 1 for v in measured)
    if fractions["before"]["n"]:
        assert sum(measured) == pytest.approx(1.0)
    for condition in saved["causal_test"].values():
        assert condition["follows"]["value"] in (0.0, None)  # no reference: nothing can "follow"
        assert condition["replay_exact_untouched_rows"]["n"] + condition["unchanged"]["n"] == 3
    assert set(metrics["summary"]) == set(saved["summary"])


def test_quick_run_on_the_bundled_model_matches_a_recomputation(bundled, tmp_path):
    metrics = nc.run(bundled, quick=True, out_dir=tmp_path, tasks=("arith", "seq"))
    arith = metrics["per_task"]["arith"]
    assert arith["n"] == 24 and arith["n_arith_parsed"] >= 18  # the model writes well-formed arith outputs
    # recompute the arith settling order from a fresh run with the same seed
    ps = studies.prompt_set(bundled, "arith", 24)
    batch = next(studies.run_prompt_set(bundled, ps, batch_size=24))
    s = st.trajectory_settling(batch.trajectory)
    eos, pad = studies.special_ids(bundled)
    regions = st.find_regions(s.final, eos, pad, bundled.tokenizer.convert_tokens_to_ids("="))
    answer, dep = st.region_step(s.settle, regions.answer), st.region_step(s.settle, regions.dependency)
    valid = (answer >= 0) & (dep >= 0)
    before = ((answer < dep) & valid).sum().item() / valid.sum().item()
    assert arith["vs_dependency"]["all"]["before"]["value"] == pytest.approx(before)
    assert arith["accuracy"]["value"] == pytest.approx(batch.correct.float().mean().item())
    for condition in metrics["causal_test"].values():
        total = sum(condition[k]["value"] for k in ("unchanged", "follows", "other"))
        assert total == pytest.approx(1.0)
        assert condition["replay_exact_untouched_rows"]["value"] in (1.0, None)  # untouched rows replay exactly
    lens = metrics["lens_and_probes"]
    assert 0 <= lens["lens_answer_before_reasoning_any_layer"]["value"] <= 1
    # the lens reads the final layer too, so it is never later than the model's own argmax
    assert (
        lens["lens_answer_before_reasoning_any_layer"]["value"] >= lens["model_argmax_answer_before_reasoning"]["value"]
    )
    assert {"settle_heatmap.png", "settle_order.png", "lens_curve.png", "causal_test.png"} <= set(metrics["figures"])
