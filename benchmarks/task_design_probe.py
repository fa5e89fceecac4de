"""Task-design probe: is a candidate organism task solved in one pass? (how carry's design was chosen)

    python benchmarks/task_design_probe.py --task addition --layers 4 --optimizer-steps 3000   # 8-digit a + b
    python benchmarks/task_design_probe.py --task addition --layers 2 --optimizer-steps 1500
    python benchmarks/task_design_probe.py --task multiplication --layers 4 --optimizer-steps 2500  # 8 digits x one digit
    python benchmarks/task_design_probe.py --task suffix --layers 4 --optimizer-steps 3000          # carry's suffix sums
    python benchmarks/task_design_probe.py --task latin --digits 6 --optimizer-steps 3000           # order-6 Latin squares

Trains a small DiffusionGemma (the organisms' text stack, with ``--layers`` layers) on the task with
the organisms' objective (uniform noise, two-pass self-conditioning), and every 500 steps prints the
exact match of the full sampler (32 steps) and of one pass (``max_denoising_steps=1``) on 200 fixed
test problems, and the share of final tokens equal to the step-0 argmax (for ``latin``, at the
blank cells only, as the organism's gate counts). A task whose one-pass
accuracy tracks the full run's does not need the denoising loop, whatever it looks like on paper.
Numbers quoted in docs/model.md; minutes per run on one core.
"""

import argparse
import random
import time

import torch
import torch.nn.functional as F
from transformers import DiffusionGemmaForBlockDiffusion

import diffinterp as di
from diffinterp.core.configs import tiny_config
from diffinterp.organisms import train as TR
from diffinterp.organisms.batches import prompt_batch
from diffinterp.organisms.tokenizer import EOS_ID, PAD_ID, decode, token_ids


def canvas(answers, L):
    out = torch.full((len(answers), L), PAD_ID, dtype=torch.long)
    for i, a in enumerate(answers):
        r = token_ids(a) + [EOS_ID]
        out[i, : len(r)] = torch.tensor(r)
    return out


def make_model(L, layers=4, d=128, seed=0, **kw):
    cfg = TR.text_config("cpu")
    cfg.update(kw)
    if layers != 4:
        cfg["num_hidden_layers"] = layers
        cfg["layer_types"] = (["sliding_attention", "full_attention"] * layers)[:layers]
        cfg["layer_types"][-1] = "full_attention"
    cfg["hidden_size"] = d
    torch.manual_seed(seed)
    return DiffusionGemmaForBlockDiffusion(tiny_config(canvas_length=L, **cfg))


def sc_loss(model, ids, mask, clean, gen, passes=2, p_sc=0.5):
    vocab = model.config.text_config.vocab_size
    noisy, _ = TR.corrupt(clean, vocab, gen)
    dec_mask = F.pad(mask, (0, clean.shape[1]), value=1)
    kw = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=noisy, decoder_attention_mask=dec_mask)
    sc = None
    if torch.rand(1, generator=gen).item() < p_sc:
        k = int(torch.randint(1, passes, (1,), generator=gen)) if passes > 2 else 1
        with torch.no_grad():
            for _ in range(k):
                sc = model(**kw, self_conditioning_logits=sc).logits.detach()
    logits = model(**kw, self_conditioning_logits=sc).logits
    return F.cross_entropy(logits.reshape(-1, vocab), clean.reshape(-1))


def evaluate(model, exs, L, steps=32, batch=200, seed=0, **gen):
    hm = di.HookedDiffusionGemma(model.eval())
    ok = 0
    first_eq = []
    preds_all = []
    for s in range(0, len(exs), batch):
        ch = exs[s : s + batch]
        ids, mask = prompt_batch([e[0] for e in ch])
        torch.manual_seed(seed + s)
        g = TR.default_generation_config(max_new_tokens=L, max_denoising_steps=steps, **gen)
        traj = hm.generate(ids, attention_mask=mask, generation_config=g)
        new = traj.sequences[:, traj.prompt_len :]
        step0 = traj.blocks[0].steps[0].argmax
        for i, e in enumerate(ch):
            p = decode(new[i][:L])
            preds_all.append(p)
            ok += p == decode(token_ids(e[1]))
            focus = list(e[2]) if len(e) > 2 else list(range(L))  # the phenomenon's positions, else all
            first_eq.append((step0[i, focus] == new[i, focus]).float().mean().item())
    model.train()
    return ok / len(exs), sum(first_eq) / len(first_eq), preds_all


def train(
    gen_fn,
    L,
    steps=2000,
    bs=64,
    lr=2e-3,
    layers=4,
    d=128,
    seed=0,
    passes=2,
    evals=(),
    eval_every=500,
    test=None,
    log=None,
    threads=2,
    **kw,
):
    torch.set_num_threads(threads)
    model = make_model(L, layers, d, seed, **kw)
    model.train()
    g = torch.Generator().manual_seed(seed + 1)
    rng = random.Random(seed)
    cfg = TR.TrainConfig(steps=steps, lr=lr)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98)
    )
    t0 = time.time()
    hist = []
    for step in range(steps):
        for gr in opt.param_groups:
            gr["lr"] = TR.lr_at(step, cfg)
        exs = [gen_fn(rng) for _ in range(bs)]
        ids, mask = prompt_batch([e[0] for e in exs])
        clean = canvas([e[1] for e in exs], L)
        loss = sc_loss(model, ids, mask, clean, g, passes=passes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist.append(loss.item())
        if (step + 1) % eval_every == 0 or step == steps - 1:
            model.eval()
            full, eq0, _ = evaluate(model, test, L)
            one, _, _ = evaluate(model, test, L, steps=1)
            msg = f"step {step + 1} loss {sum(hist[-100:]) / len(hist[-100:]):.4f} full {full:.3f} one-pass {one:.3f} step0-eq {eq0:.3f} t={time.time() - t0:.0f}s"
            print(msg, flush=True)
            model.train()
    return model


def _pair(rng):
    u = rng.random()  # digit pairs summing to 9 half the time: long carry chains
    s = 9 if u < 0.45 else rng.randint(10, 18) if u < 0.75 else rng.randint(0, 8)
    a = rng.randint(max(0, s - 9), min(9, s))
    return a, s - a


def addition(rng, n):
    ps = [_pair(rng) for _ in range(n)]
    a = int("".join(str(p[0]) for p in ps))
    b = int("".join(str(p[1]) for p in ps))
    return f"{' '.join(str(a).zfill(n))} + {' '.join(str(b).zfill(n))}", " ".join(str(a + b).zfill(n + 1))


def multiplication(rng, n):
    a = "".join(str(rng.randint(0, 9)) for _ in range(n))
    k = rng.randint(2, 9)
    return f"{' '.join(a)} * {k}", " ".join(str(int(a) * k).zfill(n + 1))


def suffix(rng, n):
    d = [rng.randint(0, 9) for _ in range(n)]
    ys, s = [], 0
    for x in d[::-1]:
        s = (s + x) % 10
        ys.append(s)
    return " ".join(map(str, d)), " ".join(map(str, ys[::-1]))


def latin(rng, n):
    """An order-n Latin square solvable by naked singles in >= 3 rounds (``latin``'s generator), its
    blank cells as the focus: does a larger order lower the step-0 share at the blanks?"""
    from diffinterp.organisms.families.latin import make_puzzle, propagation_rounds

    while True:
        square, puzzle = make_puzzle(rng, n)
        rounds = propagation_rounds(puzzle)
        if max(max(row) for row in rounds) >= 3:
            break
    cells = " ".join(str(v + 1) if v is not None else "." for row in puzzle for v in row)
    blanks = [i for i, r in enumerate(r for row in rounds for r in row) if r > 0]
    return f"latin {cells}", " ".join(str(v + 1) for row in square for v in row), blanks


TASKS = {"addition": (addition, 2), "multiplication": (multiplication, 2), "suffix": (suffix, 1), "latin": (latin, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--digits", type=int, default=None, help="operand digits (default 8; suffix 10)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--optimizer-steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make, extra = TASKS[args.task]
    n = args.digits or {"suffix": 10, "latin": 6}.get(args.task, 8)  # latin: the order
    rng = random.Random(999)
    test = [make(rng, n) for _ in range(200)]
    length = n * n + extra if args.task == "latin" else n + extra
    train(lambda r: make(r, n), L=length, steps=args.optimizer_steps, layers=args.layers, test=test, lr=args.lr,
          seed=args.seed, threads=1)  # fmt: skip


if __name__ == "__main__":
    main()
