"""Non-chronological reasoning: settle steps, ground-truth rounds, order agreement, corruption, end-to-end runs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import diffinterp as di
from case_studies import non_chronological as nc
from diffinterp import studies
from diffinterp.core.configs import real_pattern_tiny_config
from diffinterp.organisms.families import carry
from diffinterp.phenomena import settling as st


@pytest.fixture(scope="module")
def bundled():
    return di.load_model("toy4")


@pytest.fixture(scope="module")
def latin():
    return di.load_model("latin")


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


# ------------------------------------------------------------------------------- ground truth and agreement
def test_carry_rounds_equal_the_number_of_digits_each_answer_digit_depends_on(latin):
    """Brute force: answer digit i depends on prompt digit k iff changing x[k] alone changes y[i]."""
    prompts = studies.prompt_set(latin, "carry", 5, offset=3)  # the organisms share one tokenizer
    batch = SimpleNamespace(prompts=prompts, rows=list(range(5)))
    rounds = nc.ground_truth_order(batch, 12)
    for row, text in enumerate(prompts.texts):
        x = carry.parse_prompt(text)
        for i in range(len(x)):
            depends = sum(
                carry.suffix_sums(x[:k] + [(x[k] + 1) % 10] + x[k + 1 :])[i] != carry.suffix_sums(x)[i]
                for k in range(len(x))
            )
            assert rounds[row, i] == depends
        assert rounds[row, len(x) :].tolist() == [-1, -1]  # <eos> and padding are not scored


def _brute_force_agreement(argmax, active, rounds) -> list[float | None]:
    """Per row: settle steps by a direct scan, then the share of round-ordered pairs settling in order."""
    out = []
    for b in range(argmax.shape[1]):
        last = max(s for s in range(argmax.shape[0]) if active[s, b])
        final = argmax[last, b]
        settle = []
        for p in range(argmax.shape[2]):
            s = last
            while s > 0 and argmax[s - 1, b, p] == final[p]:
                s -= 1
            settle.append(s)
        good = bad = 0
        for i in range(argmax.shape[2]):
            for j in range(argmax.shape[2]):
                if 0 <= rounds[b, i] < rounds[b, j] and rounds[b, i] >= 0:
                    good += settle[i] < settle[j]
                    bad += settle[i] > settle[j]
        out.append(good / (good + bad) if good + bad else None)
    return out


def test_order_agreement_on_the_latin_organism_equals_a_brute_force_count(latin):
    prompts = studies.prompt_set(latin, "latin", 6)
    batch = next(studies.run_prompt_set(latin, prompts))
    traj = batch.trajectory
    rounds = nc.ground_truth_order(batch, latin.config.canvas_length)
    assert (rounds > 0).any() and (rounds[:, -1] == -1).all()  # blanks scored, <eos> not
    agreement = nc.order_agreement(latin, [batch], latin.config.canvas_length)
    expected = [a for a in _brute_force_agreement(traj.stack("argmax"), traj.stack("active"), rounds) if a is not None]
    got = agreement["prediction"]["dependency"]["mean_agreement"]
    assert got["n"] == len(expected) and got["value"] == pytest.approx(sum(expected) / len(expected))
    # left to right on the same positions is the same count with rounds replaced by the position index
    index = torch.where(rounds > 0, torch.arange(rounds.shape[1]).expand_as(rounds), torch.full_like(rounds, -1))
    ltr = [a for a in _brute_force_agreement(traj.stack("argmax"), traj.stack("active"), index) if a is not None]
    assert agreement["prediction"]["left_to_right"]["mean_agreement"]["value"] == pytest.approx(sum(ltr) / len(ltr))


# ------------------------------------------------------------------------------- end to end
def test_latin_settles_in_propagation_order_more_than_left_to_right(latin, tmp_path):
    metrics = nc.run(latin, n=8, out_dir=tmp_path)
    summary = metrics["summary"]
    assert summary["latin_accuracy"] >= 0.75
    assert summary["latin_prediction_vs_dependency"] > summary["latin_prediction_left_to_right"]
    gate = metrics["gate"]["latin"]
    assert gate["one_pass_accuracy"]["value"] < gate["full_accuracy"]["value"] - 0.25  # the loop matters
    assert gate["passed"] == (not gate["reasons"])  # a failed gate names its reasons
    assert gate["verdict"] == ("informative about reasoning" if gate["passed"] else "uninformative about reasoning")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["summary"] == summary
    for name in saved["figures"]:
        assert (tmp_path / name).stat().st_size > 0


def test_the_gate_labels_the_four_task_control_uninformative(bundled, tmp_path):
    metrics = nc.run(bundled, n=6, out_dir=tmp_path, tasks=["seq"])
    gate = metrics["gate"]["seq"]
    assert gate["verdict"] == "uninformative about reasoning" and not gate["passed"]
    assert gate["final_equals_step0"]["value"] > 0.7  # the first pass already decides it


def test_runs_unchanged_on_the_real_pattern_random_model(tmp_path):
    hm = di.HookedDiffusionGemma(di.tiny_model(real_pattern_tiny_config()))
    metrics = nc.run(hm, n=2, out_dir=tmp_path, max_denoising_steps=2)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    result = saved["per_task"]["random"]
    assert saved["models"]["random"]["vocab_size"] == 200 and result["n"] == 2
    assert "dependency" not in result["order"]["prediction"]  # no ground truth: left to right only
    assert result["causal_test"] is None and result["accuracy"] is None
    assert saved["gate"]["random"]["verdict"] == "uninformative about reasoning"
    assert "no reference answers" in saved["gate"]["random"]["reasons"][0]
    assert set(metrics["summary"]) == set(saved["summary"])
