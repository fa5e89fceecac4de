"""Training of the model organisms: DiffusionGemma and its autoregressive Gemma 4 twin.

Both use the real transformers classes (``DiffusionGemmaForBlockDiffusion``, ``Gemma4ForCausalLM``)
with the same text configuration, tokenizer and data: an organism's tasks
(:mod:`diffinterp.organisms.catalog`) mixed by its weights, a task tag first in the prompt.

Diffusion objective (DiffusionGemma's): the prompt goes through the causal encoder; the clean
canvas (answer, ``<eos>``, ``<pad>``...) is corrupted by replacing each position with a uniformly
random token with probability ``t ~ U(0, 1]`` (one ``t`` per example); the decoder predicts the clean
canvas under cross-entropy over every canvas position. Self-conditioning is trained by unrolling:
with probability 1/2 (per batch) ``k`` no-grad passes on the same noisy canvas (``k`` drawn from
``1 .. sc_passes - 1``) each feed their logits to the next as ``self_conditioning_logits``, and the
last pass is trained on them; otherwise the trained pass gets none. ``sc_passes = 2`` is the
two-pass recipe.

AR objective: next-token cross-entropy on ``<bos> prompt : answer <eos>``, over the answer and
``<eos>`` only (``:`` marks where the prompt ends, see :data:`~diffinterp.organisms.batches.AR_SEP`).

    diffinterp train --organism carry --model diffusion --out DIR [--seed S]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffinterp.core.configs import tiny_config
from diffinterp.organisms.batches import ar_batch, canvas_batch, prompt_batch
from diffinterp.organisms.catalog import Organism, organism
from diffinterp.organisms.checkpoints import save_checkpoint
from diffinterp.organisms.evaluate import evaluate_task
from diffinterp.organisms.task import mixture_stream
from diffinterp.organisms.tokenizer import BOS_ID, EOS_ID, PAD_ID, TOY4_VOCAB, VOCAB


# ------------------------------------------------------------------ configs
def text_config(size: str = "cpu", vocab_size: int = 72) -> dict[str, Any]:
    """The shared text-stack config (a dict of DiffusionGemma/Gemma 4 text fields).

    ``cpu``: 4 layers (sliding, full, sliding, full), d_model 128, dense MLP 128 plus a MoE branch
    of 4 experts (top-2, 64 wide): the recipe that trains in under an hour on 2 CPU cores
    (11 000 diffusion steps in 51 min with 2 threads).
    ``gpu``: 6 layers, d_model 256, 8 experts: for longer runs where a GPU is available.
    """
    base = {
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "global_head_dim": 64,
        "num_global_key_value_heads": 1,
        "sliding_window": 16,
        "num_experts": 4,
        "top_k_experts": 2,
        "moe_intermediate_size": 64,
        "max_position_embeddings": 512,
        "attention_k_eq_v": True,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": 30.0,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "bos_token_id": BOS_ID,
    }
    if size == "gpu":
        base.update(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=6,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
            num_attention_heads=8,
            num_key_value_heads=4,
            num_experts=8,
            moe_intermediate_size=256,
        )
    elif size == "tiny":  # for tests
        base.update(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            layer_types=["sliding_attention", "full_attention"],
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            global_head_dim=16,
            moe_intermediate_size=32,
        )
    elif size != "cpu":
        raise ValueError(f"unknown size {size!r}; choose cpu, gpu or tiny")
    return base


def diffusion_config(spec: Organism, size: str = "cpu"):
    """The ``DiffusionGemmaConfig`` of an organism: the shared text stack, its vocabulary and canvas."""
    return tiny_config(canvas_length=spec.canvas_length, **text_config(size, spec.vocab_size))


def ar_config(spec: Organism, size: str = "cpu"):
    """``Gemma4TextConfig`` with the same text stack (MoE branch on, no per-layer input embeddings)."""
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(**text_config(size, spec.vocab_size), enable_moe_block=True, hidden_size_per_layer_input=0)


def default_generation_config(canvas_length: int = 16, **overrides):
    """The sampler settings shipped with the diffusion checkpoint.

    Chosen on a validation set (examples 400-599 of each task's held-out split, never the reported
    400; ``python benchmarks/sampler_grid.py``): 32 steps, temperature 1.0 -> 0.5, entropy bound
    0.1, stop when the argmax canvas is stable for 2 steps and mean entropy < 0.005 (see
    docs/model.md for the grid).
    """
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )

    settings = dict(
        max_new_tokens=canvas_length,
        max_denoising_steps=32,
        t_min=0.5,
        t_max=1.0,
        stability_threshold=2,
        confidence_threshold=0.005,
        bos_token_id=BOS_ID,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
    )
    entropy_bound = overrides.pop("entropy_bound", 0.1)
    settings.update(overrides)
    return DiffusionGemmaGenerationConfig(
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(entropy_bound)), **settings
    )


# ------------------------------------------------------------------ losses
def corrupt(canvas: torch.Tensor, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform-state corruption: each position -> uniform random token with prob ``t ~ U(0, 1]``."""
    b, n = canvas.shape
    t = 1.0 - torch.rand(b, 1, generator=generator)  # (0, 1]; drawn on the CPU generator on every device
    replace = (torch.rand(b, n, generator=generator) < t).to(canvas.device)
    noise = torch.randint(0, vocab_size, (b, n), generator=generator).to(canvas.device)
    return torch.where(replace, noise, canvas), t


def diffusion_loss(
    model, input_ids, attention_mask, canvas, generator: torch.Generator, sc_passes: int = 2
) -> torch.Tensor:
    """DiffusionGemma's objective on one batch, self-conditioning unrolled over up to ``sc_passes``
    passes (see the module docstring)."""
    if sc_passes < 1:
        raise ValueError(f"sc_passes must be >= 1 (1 = no self-conditioning), got {sc_passes}")
    vocab = model.config.text_config.vocab_size
    noisy, _ = corrupt(canvas, vocab, generator)
    dec_mask = F.pad(attention_mask, (0, canvas.shape[1]), value=1)
    kwargs = dict(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=noisy, decoder_attention_mask=dec_mask
    )
    sc_logits = None
    if sc_passes > 1 and torch.rand(1, generator=generator).item() < 0.5:
        unrolled = 1 if sc_passes == 2 else int(torch.randint(1, sc_passes, (1,), generator=generator))
        with torch.no_grad():
            for _ in range(unrolled):
                sc_logits = model(**kwargs, self_conditioning_logits=sc_logits).logits.detach()
    logits = model(**kwargs, self_conditioning_logits=sc_logits).logits
    return F.cross_entropy(logits.reshape(-1, vocab), canvas.reshape(-1))


def ar_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


# ------------------------------------------------------------------ training loop
@dataclass
class TrainConfig:
    organism: str = "toy4"  # a name in diffinterp.organisms.catalog.ORGANISMS
    model: str = "diffusion"  # diffusion | ar
    size: str = "cpu"
    seed: int = 0
    steps: int = 9000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 200
    weight_decay: float = 0.01
    eval_every: int = 1000
    eval_n: int = 48
    threads: int = 2
    max_minutes: float = 58.0
    device: str = "cpu"
    init_from: str | None = None  # warm start from a saved folder (a second training stage)
    keep_layers: int | None = None  # with init_from: keep only its first N decoder layers (a smaller pass)
    stop_after: int | None = None  # stop after this many steps (the LR schedule still spans ``steps``)
    sc_passes: int | None = None  # self-conditioning passes unrolled (None: the organism's)
    extra: dict = field(default_factory=dict)

    @property
    def spec(self) -> Organism:
        return organism(self.organism)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


def build_model(cfg: TrainConfig):
    torch.manual_seed(cfg.seed)
    if cfg.keep_layers is not None and not cfg.init_from:
        raise ValueError("keep_layers needs init_from: the folder whose first layers to keep")
    if cfg.init_from:
        from transformers import DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM

        cls = DiffusionGemmaForBlockDiffusion if cfg.model == "diffusion" else Gemma4ForCausalLM
        model = cls.from_pretrained(cfg.init_from, use_safetensors=True)
        if cfg.keep_layers is not None:
            model = first_layers(model, cfg.keep_layers)
        return model.to(cfg.device)
    if cfg.model == "diffusion":
        from transformers import DiffusionGemmaForBlockDiffusion

        model = DiffusionGemmaForBlockDiffusion(diffusion_config(cfg.spec, cfg.size))
    elif cfg.model == "ar":
        from transformers import Gemma4ForCausalLM

        model = Gemma4ForCausalLM(ar_config(cfg.spec, cfg.size))
    else:
        raise ValueError(f"unknown model {cfg.model!r}; choose diffusion or ar")
    return model.to(cfg.device)


def first_layers(model, n: int):
    """A copy of ``model`` with only its first ``n`` decoder layers (their attention types kept), every
    other weight (embeddings, self-conditioning, final norm) carried over: a warm start whose single
    pass computes less, for an organism whose first pass should not solve its task."""
    text = model.config.get_text_config()
    if not 1 <= n <= text.num_hidden_layers:
        raise ValueError(f"keep_layers must be in 1..{text.num_hidden_layers} (the model's layers), got {n}")
    if text.layer_types[n - 1] != "full_attention":  # transformers forces the last layer to full attention
        full = [i + 1 for i, kind in enumerate(text.layer_types) if kind == "full_attention"]
        raise ValueError(
            f"keep_layers={n} would end on a {text.layer_types[n - 1]} layer; Gemma 4 needs its last layer "
            f"to be full attention, so keep one of {full} (layer types: {list(text.layer_types)})"
        )
    config = model.config.to_dict()
    target = config["text_config"] if "text_config" in config else config
    target["num_hidden_layers"], target["layer_types"] = n, list(text.layer_types[:n])
    if target.get("per_layer_config"):  # the full layers' own head sizes, for the layers kept
        target["per_layer_config"] = {k: v for k, v in target["per_layer_config"].items() if int(k) < n}
    smaller = type(model)(type(model.config).from_dict(config))
    wanted = smaller.state_dict().keys()
    state = {k: v for k, v in model.state_dict().items() if k in wanted}
    missing = wanted - state.keys()
    if missing:
        raise ValueError(f"the smaller model has weights the folder lacks: {sorted(missing)[:5]}")
    smaller.load_state_dict(state)
    smaller.generation_config = model.generation_config
    return smaller


def batches(cfg: TrainConfig, stream=None):
    """Endless training batches from ``stream`` (default: the organism's seeded task mixture)."""
    spec = cfg.spec
    stream = mixture_stream(spec.task_objects, spec.weights, cfg.seed) if stream is None else stream
    while True:
        exs = [next(stream) for _ in range(cfg.batch_size)]
        prompts, answers = [e.prompt for e in exs], [e.answer for e in exs]
        if cfg.model == "diffusion":
            ids, mask = prompt_batch(prompts)
            yield ids, mask, canvas_batch(answers, spec.canvas_length)
        else:
            yield ar_batch(prompts, answers)


def loss_on(model, batch, cfg: TrainConfig, generator) -> torch.Tensor:
    batch = [b.to(cfg.device) for b in batch]
    if cfg.model == "diffusion":
        passes = cfg.sc_passes if cfg.sc_passes is not None else cfg.spec.sc_passes
        return diffusion_loss(model, *batch, generator=generator, sc_passes=passes)
    return ar_loss(model, *batch)


def train_losses(cfg: TrainConfig, n_steps: int) -> list[float]:
    """Losses of the first ``n_steps`` optimizer steps (used by the reproducibility test)."""
    losses: list[float] = []
    _run(cfg, n_steps=n_steps, on_step=lambda _step, loss: losses.append(loss), quiet=True)
    return losses


def _run(cfg: TrainConfig, n_steps: int | None = None, on_step=None, quiet: bool = False, evaluate=None, stream=None):
    torch.set_num_threads(cfg.threads)
    model = build_model(cfg)
    model.train()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    total = n_steps if n_steps is not None else min(cfg.steps, cfg.stop_after or cfg.steps)
    data = batches(cfg, stream)
    t0 = time.time()
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"train {cfg.model}", mininterval=5.0)
    history: list[dict] = []
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = loss_on(model, next(data), cfg, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = float(loss.detach())
        if on_step is not None:
            on_step(step, value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        history.append({"step": step, "loss": value, "time_s": time.time() - t0})
        last = step == total - 1
        out_of_time = (time.time() - t0) / 60 > cfg.max_minutes
        if evaluate is not None and ((step + 1) % cfg.eval_every == 0 or last or out_of_time):
            model.eval()
            acc = evaluate(model)
            model.train()
            history[-1]["eval"] = acc
            msg = " ".join(f"{k}={v:.3f}" for k, v in acc.items())
            (bar.write if bar is not None else print)(f"step {step + 1}: loss {value:.4f} held-out {msg}")
        if out_of_time:
            (bar.write if bar is not None else print)(f"stopping at step {step + 1}: time budget reached")
            break
    if bar is not None:
        bar.close()
    model.eval()
    return model, history


def quick_eval(model, cfg: TrainConfig, n: int) -> dict[str, float]:
    """Exact match on the first ``n`` held-out examples of each task with the shipped sampler
    settings, and for the diffusion model also in one pass (``TASK/1``: ``max_denoising_steps=1``),
    so the training log records whether the loop is load-bearing as training goes."""
    spec, out = cfg.spec, {}
    for task in spec.tasks:
        kwargs = dict(n=n, model_kind=cfg.model, batch_size=n, canvas_length=spec.canvas_length)
        out[task] = evaluate_task(model, task, **kwargs, **_generation(cfg))["accuracy"]
        if cfg.model == "diffusion":
            out[f"{task}/1"] = evaluate_task(model, task, **kwargs, **_generation(cfg, max_denoising_steps=1))[
                "accuracy"
            ]
    return out


def _generation(cfg: TrainConfig, **overrides) -> dict:
    """Generation arguments of a model under training (the organism's shipped settings)."""
    if cfg.model != "diffusion":
        return {}
    config = default_generation_config(cfg.spec.canvas_length, **{**cfg.spec.sampler, **overrides})
    return {"generation_config": config}


def save_loss_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    k = 50
    smooth = [
        sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))
    ]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(steps, losses, alpha=0.25, lw=0.6, label="loss")
    ax[0].plot(steps, smooth, lw=1.5, label=f"mean of {k}")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("optimizer step")
    ax[0].set_ylabel("training cross-entropy")
    ax[0].legend()
    evals = [h for h in history if "eval" in h]
    for key in dict.fromkeys(k for h in evals for k in h["eval"]):
        one_pass = key.endswith("/1")
        ax[1].plot(
            [h["step"] + 1 for h in evals],
            [h["eval"].get(key, float("nan")) for h in evals],
            marker="o",
            linestyle=":" if one_pass else "-",
            label=f"{key[:-2]} (one pass)" if one_pass else key,
        )
    ax[1].set_ylim(0, 1.02)
    ax[1].set_xlabel("optimizer step")
    ax[1].set_ylabel("held-out exact match (sample)")
    ax[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(cfg: TrainConfig, out: str | Path, stream=None) -> Path:
    """Train ``cfg.model`` on ``cfg.organism`` and save an HF folder (weights, configs, tokenizer,
    loss curve, log, metadata) to ``out``.

    ``stream``: an iterator of :class:`~diffinterp.organisms.task.Example` to train on instead of
    the organism's mixture.
    """
    spec = cfg.spec
    out = Path(out)
    t0 = time.time()
    model, history = _run(cfg, evaluate=lambda m: quick_eval(m, cfg, cfg.eval_n), stream=stream)
    minutes = (time.time() - t0) / 60
    model = model.to("cpu")
    if cfg.model == "diffusion":
        model.generation_config = default_generation_config(spec.canvas_length, **spec.sampler)
    else:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=spec.canvas_length,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )
    log = {
        "train_config": asdict(cfg),
        "minutes": minutes,
        "steps_run": len(history),
        "final_loss_mean_100": sum(h["loss"] for h in history[-100:]) / min(100, len(history)),
        "evals": [{"step": h["step"] + 1, **h["eval"]} for h in history if "eval" in h],
        "torch": torch.__version__,
        "threads": cfg.threads,
    }
    metadata = {
        "organism": spec.name,
        "phenomenon": spec.phenomenon,
        "demo_prompt": spec.demo_prompt,
        "trained": True,
        "tasks": list(spec.tasks),
        "canvas_length": spec.canvas_length,
        "model": cfg.model,
        "docs": "docs/model.md",
    }
    vocab = TOY4_VOCAB if spec.vocab_size == 64 else VOCAB
    with save_checkpoint(out, model, metadata, vocab) as folder:
        save_loss_curve(history, folder / "loss_curve.png", f"{spec.name} {cfg.model} ({cfg.size}, seed {cfg.seed})")
        (folder / "training_log.json").write_text(json.dumps(log, indent=1))
        (folder / "loss_history.json").write_text(json.dumps([[h["step"], round(h["loss"], 5)] for h in history]))
    return out
