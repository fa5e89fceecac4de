"""``toy4``: the four tasks of the first bundled model (kept as the control whose loop is *not* load-bearing).

Every example is a ``(prompt, answer)`` pair of strings in the toy tokenizer's alphabet. The
prompt starts with the task tag; the answer is the text the model must write (the canvas holds the
answer's tokens, then ``<eos>``, then ``<pad>``).

=========  ================================================  ========================  ==============================
task       prompt                                            answer                    what a case study can look for
=========  ================================================  ========================  ==============================
``arith``  ``arith a=3 b=a+4 c=b*2 ? c``                     ``b=7 c=14 = 14``         the answer sits after its own
                                                                                       scratchpad in the canvas
                                                                                       (non-chronological reasoning)
``seq``    ``seq rev 3 1 4 1``                               ``1 4 1 3``               variable output length 2-9
                                                                                       (positional smearing, EOS)
``hop``    ``hop x=5 q=7 m=x k=q t=m ? t``                   ``5``                     2-4 binding hops whose
                                                                                       intermediate values are never
                                                                                       written (latent multi-hop)
``mon``    ``mon 4 7 2 9``                                   ``keep 4 7 2 9``          a hidden property (first > last
                                                                                       digit) picks one of two rules;
                                                                                       the rule shows in the output
=========  ================================================  ========================  ==============================

The model trained on them decides almost everything in its first pass (docs/model.md): it is the
organism on which the dynamics gate fails, a reference for the others.
"""

from __future__ import annotations

import random
import string

from diffinterp.organisms.task import Example, Task

TASKS = ("arith", "seq", "hop", "mon")
#: Sampling weights of the tasks in the training mixture (the two reasoning tasks get more).
TASK_WEIGHTS = {"arith": 0.35, "hop": 0.35, "seq": 0.15, "mon": 0.15}


# ---------------------------------------------------------------- generators (one raw example each)
ARITH_MAX_VALUE = 19


def chain_step(rng: random.Random, value: int, max_value: int) -> tuple[str, int, int]:
    """One step ``(op, k, new value)`` of an arithmetic chain: an operation drawn uniformly, then an
    operand 1..9 (2..9 for ``*``) keeping the value in 0..``max_value``."""
    by_op: dict[str, list[tuple[int, int]]] = {}
    for k in range(1, 10):
        if value + k <= max_value:
            by_op.setdefault("+", []).append((k, value + k))
        if value - k >= 0:
            by_op.setdefault("-", []).append((k, value - k))
        if k >= 2 and value * k <= max_value:
            by_op.setdefault("*", []).append((k, value * k))
    op = rng.choice(sorted(by_op))
    k, new = rng.choice(by_op[op])
    return op, k, new


def _arith(rng: random.Random) -> tuple[str, str]:
    names = "abcd"
    n_steps = rng.choice((2, 3))
    value = rng.randint(1, 9)
    prompt = [f"a={value}"]
    scratch = []
    for i in range(1, n_steps + 1):
        op, k, value = chain_step(rng, value, ARITH_MAX_VALUE)
        prompt.append(f"{names[i]}={names[i - 1]}{op}{k}")
        scratch.append(f"{names[i]}={value}")
    last = names[n_steps]
    return f"arith {' '.join(prompt)} ? {last}", f"{' '.join(scratch)} = {value}"


def _seq(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(2, 9)
    items = [str(rng.randint(0, 9)) for _ in range(n)]
    op = rng.choice(("copy", "rev"))
    out = items if op == "copy" else items[::-1]
    return f"seq {op} {' '.join(items)}", " ".join(out)


def hop_example(rng: random.Random, hops: int | None = None) -> tuple[str, str]:
    """A hop example; ``hops`` fixes the chain length (default: 2-4 at random, the task's range)."""
    hops = rng.randint(2, 4) if hops is None else hops
    letters = rng.sample(string.ascii_lowercase, hops + 1 + 2)
    main, distract = letters[: hops + 1], letters[hops + 1 :]
    v_main, v_dis = rng.sample(range(10), 2)
    chain_a = [f"{main[0]}={v_main}"] + [f"{main[i]}={main[i - 1]}" for i in range(1, hops + 1)]
    chain_b = [f"{distract[0]}={v_dis}", f"{distract[1]}={distract[0]}"]
    # a random interleaving that keeps each chain's order (definitions come before uses)
    slots = ["a"] * len(chain_a) + ["b"] * len(chain_b)
    rng.shuffle(slots)
    ia = ib = 0
    stmts = []
    for s in slots:
        if s == "a":
            stmts.append(chain_a[ia])
            ia += 1
        else:
            stmts.append(chain_b[ib])
            ib += 1
    return f"hop {' '.join(stmts)} ? {main[-1]}", str(v_main)


def _mon(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(3, 6)
    while True:
        items = [rng.randint(0, 9) for _ in range(n)]
        if items[0] != items[-1]:
            break
    text = " ".join(map(str, items))
    if items[0] > items[-1]:  # the hidden property: first digit larger than the last -> reverse rule
        return f"mon {text}", "rev " + " ".join(map(str, items[::-1]))
    return f"mon {text}", f"keep {text}"


def hidden_property(example: Example) -> str | None:
    """The property a monitor should detect: for ``mon``, which rule applies (``"rev"``/``"keep"``)."""
    if example.task == "mon":
        digits = example.prompt.split()[1:]
        return "rev" if int(digits[0]) > int(digits[-1]) else "keep"
    return None


def case_of(example: Example) -> str:
    """The sub-case of an example, for per-case accuracy tables: arith chain length (``"3 steps"``),
    hop count and which chain's value the prompt states first (``"4 hops, answer first"`` or
    ``"4 hops, distractor first"``: a model that answers with the first number it reads is right on
    the first kind only), seq operation and length (``"rev 7"``), or mon rule (``"rule rev"``)."""
    words = example.prompt.split()
    if example.task == "arith":
        return f"{len(words) - 4} steps"  # tag, a=..., then one word per step, then '? x'
    if example.task == "hop":
        uses = sum(1 for w in words[1:-2] if not w.split("=")[1].isdigit())
        first = "answer" if words[1].split("=")[1] == example.answer else "distractor"
        return f"{uses - 1} hops, {first} first"  # the distractor chain always has one use
    if example.task == "seq":
        return f"{words[1]} {len(words) - 2}"
    if example.task == "mon":
        return f"rule {hidden_property(example)}"
    raise ValueError(f"{example.task!r} is not a toy4 task; toy4 tasks: {', '.join(TASKS)}")


FAMILY = {
    "arith": Task("arith", _arith, "two- or three-step arithmetic chain with its scratchpad", case_of=case_of),
    "seq": Task("seq", _seq, "copy or reverse 2-9 digits", case_of=case_of),
    "hop": Task("hop", hop_example, "2-4 binding hops past a distractor chain", case_of=case_of),
    "mon": Task(
        "mon", _mon, "a hidden property picks one of two rules", case_of=case_of, hidden_property=hidden_property
    ),
}
