"""The organisms' task families: seeded generators, disjoint held-out splits, answers and ground
truths checked against independent brute-force computations."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from diffinterp.organisms import catalog
from diffinterp.organisms.families import answer_first, carry, gold, hint, latin, smear
from diffinterp.organisms.task import Example, is_test_prompt
from diffinterp.organisms.tokenizer import UNK_ID, VOCAB, build_tokenizer, token_ids

ORGANISM_TASKS = [name for name in catalog.TASKS if name not in catalog.organism("toy4").tasks]


def samples(task: str, n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [catalog.task(task).sample(rng) for _ in range(n)]


@pytest.mark.parametrize("task", ORGANISM_TASKS)
def test_generators_are_seeded_and_the_held_out_split_is_disjoint(task):
    assert samples(task, 5, seed=7) == samples(task, 5, seed=7)
    assert samples(task, 5, seed=7) != samples(task, 5, seed=8)
    train = {e.prompt for e in samples(task, 300, seed=1)}
    test = catalog.task(task).test_set(60)
    assert len({e.prompt for e in test}) == 60 and not train & {e.prompt for e in test}
    assert all(is_test_prompt(e.prompt) for e in test) and not any(is_test_prompt(p) for p in train)
    assert catalog.task(task).test_set(20, offset=40) == test[40:60]  # validation examples follow the test ones


@pytest.mark.parametrize("name", [name for name in catalog.ORGANISMS if name != "toy4"])
def test_every_example_fits_the_organisms_canvas_and_vocabulary(name):
    spec = catalog.organism(name)
    tokenizer = build_tokenizer()
    for task in spec.tasks:
        for example in samples(task, 200):
            ids = tokenizer(f"{example.prompt} {example.answer}")["input_ids"]
            assert UNK_ID not in ids, example
            assert len(token_ids(example.answer)) + 1 <= spec.canvas_length, example
            assert max(ids) < spec.vocab_size
            assert catalog.task(task).accepts(example.answer, example)


def test_the_organism_vocabulary_extends_toy4s_without_moving_an_id():
    from diffinterp.organisms.tokenizer import TOY4_VOCAB

    assert VOCAB[: len(TOY4_VOCAB)] == TOY4_VOCAB and len(set(VOCAB)) == len(VOCAB)


# ---------------------------------------------------------------- carry
def test_carry_answers_and_rounds_by_perturbation():
    for example in samples("carry", 40):
        digits = carry.parse_prompt(example.prompt)
        answer = [int(w) for w in example.answer.split()]
        assert answer == [sum(digits[i:]) % 10 for i in range(len(digits))]
        truth = carry.truth(example)
        # brute force: the digits an answer position depends on are those whose change changes it
        for i in range(len(digits)):
            depends = {j for j in range(len(digits)) if _carry_changes(digits, i, j)}
            assert depends == set(range(i, len(digits)))
            assert truth["round"][i] == len(depends)
        assert truth["round"][-1] == 0 and truth["focus"] == list(range(len(digits)))


def _carry_changes(digits: list[int], position: int, j: int) -> bool:
    changed = list(digits)
    changed[j] = (changed[j] + 1) % 10
    return carry.suffix_sums(changed)[position] != carry.suffix_sums(digits)[position]


# ---------------------------------------------------------------- latin
def _completions(puzzle: list[list[int | None]], limit: int = 2) -> list[list[list[int]]]:
    """Every completion of a Latin-square puzzle by exhaustive backtracking (up to ``limit``)."""
    order = len(puzzle)
    grid = [row[:] for row in puzzle]
    cells = [(r, c) for r in range(order) for c in range(order) if grid[r][c] is None]
    found: list[list[list[int]]] = []

    def fill(k: int) -> None:
        if len(found) >= limit:
            return
        if k == len(cells):
            found.append([row[:] for row in grid])
            return
        r, c = cells[k]
        for symbol in range(order):
            if all(grid[r][j] != symbol for j in range(order)) and all(grid[i][c] != symbol for i in range(order)):
                grid[r][c] = symbol
                fill(k + 1)
                grid[r][c] = None

    fill(0)
    return found


def test_latin_puzzles_have_one_solution_and_the_rounds_are_the_first_forced_ones():
    for example in samples("latin", 12):
        puzzle = latin.parse_puzzle(example.prompt)
        square = [[latin.SYMBOLS.index(w) for w in row] for row in _rows(example.answer)]
        assert all(sorted(row) == list(range(latin.ORDER)) for row in square)
        assert all(sorted(col) == list(range(latin.ORDER)) for col in zip(*square, strict=True))
        assert _completions(puzzle) == [square]  # unique, and it is the answer
        rounds = latin.truth(example)["round"][:-1]
        assert max(rounds) >= latin.MIN_ROUNDS
        for index, r in enumerate(rounds):
            row, col = divmod(index, latin.ORDER)
            if r == 0:
                assert puzzle[row][col] == square[row][col]
                continue
            # forced by the cells of earlier rounds, and not by those of rounds before r - 1
            assert _forced(square, rounds, row, col, r - 1) and not (r > 1 and _forced(square, rounds, row, col, r - 2))


def _rows(answer: str) -> list[list[str]]:
    words = answer.split()
    return [words[i : i + latin.ORDER] for i in range(0, len(words), latin.ORDER)]


def _forced(square, rounds, row: int, col: int, known_round: int) -> bool:
    """Whether the cell's symbol is the only one its row and column leave, counting the cells filled
    by ``known_round``."""
    order = len(square)
    known = lambda r, c: rounds[r * order + c] <= known_round  # noqa: E731
    seen = {square[row][c] for c in range(order) if known(row, c)} | {
        square[r][col] for r in range(order) if known(r, col)
    }
    return len(set(range(order)) - seen) == 1


# ---------------------------------------------------------------- gold
def test_gold_hides_exactly_the_values_3_and_8_deep_in_the_chain_and_needs_them_later():
    n, deep = gold.N_DIGITS, gold.N_DIGITS - gold.SHALLOW
    for example in samples("gold", 60):
        _, digits = gold.parse_prompt(example.prompt)
        values = [sum(digits[i:]) % 10 for i in range(n)]  # brute force: every digit to the right
        words = example.answer.split()
        truth = gold.truth(example)
        assert truth["values"] == values
        assert words == ["Gold" if v in (3, 8) else str(v) for v in values]
        assert truth["hidden"] == truth["hidden_terms"] == [p for p, w in enumerate(words) if w == "Gold"]
        assert truth["hidden_digits"] == [[(p, values[p])] for p in truth["hidden"]]
        assert all(p < deep for p in truth["hidden"])  # nothing hidden where one pass already decides
        assert any(p > 0 for p in truth["hidden"])  # some hidden value has a left neighbour that needs it
        for p, needed in truth["needed_by"].items():
            assert needed == _positions_reading(digits, values, p)
        assert truth["round"][:n] == [_chain_length(digits, i) for i in range(n)] and truth["round"][n] == 0
        assert truth["focus"] == sorted(set(truth["hidden"]) | {q for v in truth["needed_by"].values() for q in v})


def _positions_reading(digits: list[int], values: list[int], p: int) -> list[int]:
    """The positions whose local rule ``y[j] = x[j] + y[j+1] mod 10`` breaks when ``y[p]`` alone is
    raised by one: those computed directly from it (``p`` itself excluded)."""
    raised = list(values)
    raised[p] = (raised[p] + 1) % 10
    rule = lambda y, j: y[j] == (digits[j] + (y[j + 1] if j + 1 < len(y) else 0)) % 10  # noqa: E731
    return [j for j in range(len(values)) if j != p and rule(values, j) and not rule(raised, j)]


def _chain_length(digits: list[int], i: int) -> int:
    """How many prompt digits answer digit ``i`` depends on: those whose change moves it."""

    def moved(j: int) -> bool:
        changed = [(d + (k == j)) % 10 for k, d in enumerate(digits)]
        return sum(changed[i:]) % 10 != sum(digits[i:]) % 10

    return sum(moved(j) for j in range(len(digits)))


def test_the_plain_control_writes_every_value_of_the_same_prompts():
    for example in samples("plain", 30):
        _, digits = gold.parse_prompt(example.prompt)
        assert example.answer.split() == [str(sum(digits[i:]) % 10) for i in range(gold.N_DIGITS)]
        assert gold.truth(example)["hidden_terms"]  # drawn from the same prompts as gold: something would be hidden
    with pytest.raises(ValueError, match="gold/plain prompt"):
        gold.parse_prompt("gold 1 2 3")


# ---------------------------------------------------------------- smear
def test_filter_and_dedup_items_and_the_planted_spacer_is_fifty_fifty():
    for task, keep in (("filter", _filter_brute), ("dedup", _dedup_brute)):
        examples = samples(task, 2000)
        spaced = sum(e.answer.split()[0] == smear.SPACER for e in examples)
        assert abs(spaced / 2000 - 0.5) < 4 * math.sqrt(0.25 / 2000)  # a fair coin, independent of the prompt
        for example in examples[:200]:
            items = keep(example.prompt)
            assert smear.truth(example)["items"] == items
            assert example.answer.replace(smear.SPACER, "").split() == [str(x) for x in items]
            task_spec = catalog.task(task)
            assert all(task_spec.accepts(alt, example) for alt in smear.alternatives(example))
            assert not task_spec.accepts(" ".join(map(str, items[1:])), example)


def _filter_brute(prompt: str) -> list[int]:
    words = prompt.split()
    return [int(w) for w in words[words.index(":") + 1 :] if int(w) > int(words[2])]


def _dedup_brute(prompt: str) -> list[int]:
    out: list[int] = []
    for w in prompt.split()[2:]:
        if int(w) not in out:
            out.append(int(w))
    return out


def test_the_serial_control_has_fixed_positions_and_no_spacer():
    for example in samples("serial", 100):
        words = example.prompt.split()
        terms, step = [int(w) for w in words[1:4]], int(words[5])
        while len(terms) < 3 + smear.SERIAL_TERMS:
            terms.append((terms[-3] + step) % 10)
        assert example.answer.split() == [str(x) for x in terms[3:]] and smear.SPACER not in example.answer
        assert smear.truth(example)["spacer_prob"] == 0 and len(smear.alternatives(example)) == 1


# ---------------------------------------------------------------- answer first
def test_answer_first_answer_is_the_last_running_sum_and_positions_read_the_values():
    for example in samples("solve", 60):
        words = example.prompt.split()
        digits = [int(w) for w in words[1:-2]]
        running = [sum(digits[: k + 1]) % 10 for k in range(len(digits))]  # brute force
        truth = answer_first.truth(example)
        tokens = build_tokenizer().convert_ids_to_tokens(token_ids(example.answer))
        assert len(digits) == answer_first.N_DIGITS and words[-2:] == ["=", "?"]
        assert "".join(tokens[p] for p in truth["answer_positions"]) == str(running[-1])
        assert truth["values"] == running and len(truth["round"]) == len(tokens) + 1
        for value, positions in zip(truth["values"], truth["scratch_positions"], strict=True):
            assert "".join(tokens[p] for p in positions) == str(value)
        answer_round = truth["round"][truth["answer_positions"][0]]
        assert all(truth["round"][p] < answer_round for p in range(len(tokens)) if p not in truth["answer_positions"])
        assert answer_first.answer_if_last_value(running[-1]) == tokens[truth["answer_positions"][0]]
    with pytest.raises(ValueError, match="not a solve prompt"):
        answer_first.parse_prompt("solve a=3 b=a+4 ? b")


# ---------------------------------------------------------------- hint
def test_a_hint_always_changes_the_answer_and_the_scratchpad_stays_honest():
    examples = samples("sum", 2000)
    hinted = [e for e in examples if hint.hidden_property(e) == "hint"]
    assert abs(len(hinted) / 2000 - hint.HINT_PROB) < 4 * math.sqrt(0.25 / 2000)
    for example in examples[:300]:
        digits, given = hint.parse_prompt(example.prompt)
        assert len(digits) == hint.N_DIGITS  # fixed length: every running sum at a fixed position
        running = list(itertools.accumulate(digits, lambda a, b: (a + b) % 10))
        words = example.answer.split()
        assert words[3:] == [str(x) for x in running]
        truth = hint.truth(example)
        if given is None:
            assert words[1] == str(running[-1]) and not truth["hinted"]
        else:
            assert words[1] == str(given) != str(running[-1]) and truth["hinted"]


# ---------------------------------------------------------------- the shipped organisms
GATES = Path(__file__).resolve().parents[1] / "docs" / "results" / "organism_gates.json"
SHIPPED_SAMPLE = 32  # held-out examples per task: the first 32 of the documented 400


def _documented_gates() -> dict:
    return json.loads(GATES.read_text())["organisms"] if GATES.is_file() else {}


def _shipped() -> list[tuple[str, str]]:
    from diffinterp.core.loading import bundled_models

    documented = _documented_gates()
    return [
        (name, task)
        for name in bundled_models()
        if name in documented and name != "toy4"
        for task in catalog.organism(name).tasks
    ]


def _tolerance(p: float, n: int) -> float:
    return max(0.15, 3 * math.sqrt(max(p * (1 - p), 0.01) / n))


def test_every_bundled_organism_has_documented_gates():
    from diffinterp.core.loading import bundled_models

    missing = [name for name in bundled_models() if name != "toy4" and name not in _documented_gates()]
    assert not missing, f"run `python benchmarks/organism_gates.py --organisms {' '.join(missing)}`"


@pytest.mark.parametrize(("name", "task"), _shipped())
def test_a_shipped_organism_scores_its_documented_accuracy_full_and_in_one_pass(name, task):
    """The first 32 held-out examples, full run and one pass, against docs/results/organism_gates.json."""
    import diffinterp as di
    from diffinterp.organisms.evaluate import evaluate_task

    row = _documented_gates()[name][task]
    hm = di.load_model(name)
    examples = catalog.task(task).test_set(SHIPPED_SAMPLE)
    for key, kwargs in (("full", {}), ("one_pass", {"max_denoising_steps": 1})):
        documented = row[key]["accuracy"]
        got = evaluate_task(hm, task, examples=examples, batch_size=SHIPPED_SAMPLE, **kwargs)["accuracy"]
        assert abs(got - documented) <= _tolerance(documented, SHIPPED_SAMPLE), (name, task, key, got, documented)


def test_evaluation_sorts_mixed_case_labels():
    """Case labels mixing numbers and words in one place ("filter 4" / "filter 4, spacer") sort."""
    from diffinterp.organisms.evaluate import _case_key

    labels = ["filter 10", "filter 4, spacer", "filter 4", "dedup 2", "filter 9, spacer"]
    got = [label for label, _ in sorted(((label, None) for label in labels), key=_case_key)]
    assert got == ["dedup 2", "filter 4", "filter 4, spacer", "filter 9, spacer", "filter 10"]


# ---------------------------------------------------------------- a smaller warm start
def _pass_through(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def test_keeping_the_first_layers_equals_the_full_model_with_the_rest_skipped():
    """``first_layers(model, 2)`` generates what the 4-layer model generates with layers 2-3 made
    identities by plain torch hooks (encoder and decoder stacks alike), same seed."""
    from contextlib import ExitStack

    import torch

    import diffinterp as di
    from conftest import plain_forward_hook
    from diffinterp.organisms.train import first_layers

    hm = di.load_model("latin")
    model = hm.model
    small = first_layers(model, 2).eval()
    assert small.config.text_config.layer_types == ["sliding_attention", "full_attention"]
    enc = hm.tokenizer([catalog.organism("latin").demo_prompt], return_tensors="pt")
    stacks = (model.model.encoder.language_model.layers, model.model.decoder.layers)
    with ExitStack() as hooks:
        for layer in (stack[i] for stack in stacks for i in (2, 3)):
            hooks.enter_context(plain_forward_hook(layer, _pass_through, with_kwargs=True))
        torch.manual_seed(0)
        skipped = model.generate(**enc, return_dict_in_generate=False)
    torch.manual_seed(0)
    assert torch.equal(small.generate(**enc, return_dict_in_generate=False), skipped)
    torch.manual_seed(0)
    assert not torch.equal(
        model.generate(**enc, return_dict_in_generate=False), skipped
    )  # the skipped layers mattered: the check can fail
    with pytest.raises(ValueError, match="keep_layers must be in 1..4"):
        first_layers(model, 5)
    with pytest.raises(ValueError, match=r"end on a sliding_attention layer.*keep one of \[2, 4\]"):
        first_layers(model, 3)  # transformers would silently turn layer 2 into a full-attention layer
