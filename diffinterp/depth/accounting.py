"""Opaque serial depth of whole models: AR Gemma 4 per token, DiffusionGemma per step and chained.

Accounting (each choice is a parameter, so the alternatives can be reported side by side):

- **AR, per generated token**: a prefill over the prompt fills the KV cache; the argmax token (an
  interpretable state) goes through one decode step that reads the cache. The token's depth is the
  decode step's logits depth, including paths through the cached keys and values of earlier tokens.
- **Diffusion, per step**: the encoder fills the KV cache from the prompt tokens; each denoising
  step runs the decoder on a canvas of token ids and the self-conditioning signal of the previous
  step. The canvas is ids chosen by sampling (interpretable, depth 0) unless
  ``canvas_through_acceptance`` makes it inherit the depth of the entropy-based acceptance mask that
  picks which sampled ids are kept. The signal is the tempered logits (``continuous``: the chain runs
  through every step) or a token bottleneck (``argmax``, ``sample``: reset at every step; ``none``:
  no signal). The paper's token bottleneck (``topk:K``, ``topp:P``: a few tokens per position with
  their probabilities) is counted both ways: as interpretable, so the chain resets at every step
  (the paper's convention, beside its 1.1x), and as opaque, since the kept probabilities are
  continuous numbers the next step computes with (the chain runs on).

Models are built on the ``meta`` device with transformers' eager attention and the ``batched_mm``
experts implementation: the default MoE dispatch loops over the experts that received tokens (a
data-dependent ``nonzero``), which meta tensors cannot evaluate; ``batched_mm`` computes every
token's top-k experts by gathering their weights, the same arithmetic per token with a static
shape. The expert outputs are then summed over the top-k (a reduction of k terms).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, Gemma4ForCausalLM, Gemma4TextConfig
from transformers.cache_utils import DynamicCache

from diffinterp.core.bottleneck import PAPER_TOPK, PAPER_TOPP, Bottleneck, bottleneck_logits
from diffinterp.core.configs import real_ar_text_config, real_config, tiny_config, tiny_text_config
from diffinterp.depth.calculator import DepthReport, DepthTracer

META = torch.device("meta")


def _prepare_for_tracing(model):
    model.set_attn_implementation("eager")
    model.set_experts_implementation("batched_mm")
    return model.eval()


def ar_meta_model(text_config: dict) -> Gemma4ForCausalLM:
    """Autoregressive Gemma 4 from a text-config dict, on the meta device, ready for depth tracing."""
    config = dict(text_config)
    config.pop("model_type", None)
    with META:
        model = Gemma4ForCausalLM(Gemma4TextConfig(**config))
    return _prepare_for_tracing(model)


def diffusion_meta_model(config: DiffusionGemmaConfig) -> DiffusionGemmaForBlockDiffusion:
    """DiffusionGemma from a config, on the meta device, ready for depth tracing."""
    with META:
        model = DiffusionGemmaForBlockDiffusion(copy.deepcopy(config))
    return _prepare_for_tracing(model)


def ar_token_depth(model: Gemma4ForCausalLM, prompt_len: int = 16) -> DepthReport:
    """Depth of one generated token: a decode step on the prompt's KV cache."""
    device = next(model.parameters()).device
    with torch.no_grad(), DepthTracer(root=model) as tracer:
        prompt = torch.zeros(1, prompt_len, dtype=torch.long, device=device)
        prefill = model(input_ids=prompt, use_cache=True)
        token = prefill.logits[:, -1].argmax(-1, keepdim=True)  # interpretable: resets
        decode = model(input_ids=token, past_key_values=prefill.past_key_values, use_cache=True)
        return tracer.report(decode.logits)


@dataclass
class DiffusionDepths:
    """Per-step depths of a chain of denoising steps on one canvas."""

    bottleneck: str
    canvas_through_acceptance: bool
    step_depths: list[int]  # depth of each step's logits, chained from the first step
    first_step: DepthReport
    last_step: DepthReport

    @property
    def chained(self) -> int:
        return self.step_depths[-1]

    @property
    def per_step(self) -> int:
        """Depth one step adds (its own depth when the chain resets, else the increment)."""
        if len(self.step_depths) < 2:
            return self.step_depths[0]
        return self.step_depths[-1] - self.step_depths[-2]


def diffusion_step_depths(
    model: DiffusionGemmaForBlockDiffusion,
    n_steps: int,
    bottleneck: str = "continuous",
    *,
    prompt_len: int = 16,
    t_max: float = 0.8,
    t_min: float = 0.4,
    entropy_bound: float = 0.1,
    canvas_through_acceptance: bool = False,
    interpretable_tokens: bool = True,
) -> DiffusionDepths:
    """Trace ``n_steps`` denoising steps of one canvas and the self-conditioning between them.

    ``interpretable_tokens``: whether a ``topk`` / ``topp`` state (a few tokens with their
    probabilities) counts as interpretable, resetting the chain (the paper's convention), or as the
    continuous probabilities it also is (the chain runs on). ``argmax`` / ``sample`` states are token
    ids and always reset.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1 (got {n_steps})")
    mode = Bottleneck.parse(bottleneck)
    device = next(model.parameters()).device
    canvas_length = model.config.canvas_length
    vocab = model.config.text_config.vocab_size
    positions = torch.arange(prompt_len, prompt_len + canvas_length, device=device).unsqueeze(0)
    depths: list[int] = []
    reports: list[DepthReport] = []
    with torch.no_grad(), DepthTracer(root=model) as tracer:
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        prompt = torch.zeros(1, prompt_len, dtype=torch.long, device=device)
        model.model.encoder(input_ids=prompt, past_key_values=cache, use_cache=True)
        canvas = torch.randint(0, vocab, (1, canvas_length), device=device)
        signal = None
        for step in range(n_steps):
            output = model(
                decoder_input_ids=canvas,
                self_conditioning_logits=signal if mode.feeds_signal else None,
                past_key_values=cache,
                decoder_position_ids=positions,
            )
            report = tracer.report(output.logits)
            depths.append(report.depth)
            reports.append(report)
            temperature = t_min + (t_max - t_min) * (n_steps - step) / n_steps
            processed = output.logits / temperature
            probabilities = processed.softmax(-1)
            sampled = torch.multinomial(probabilities.view(-1, vocab), 1).view(1, canvas_length)
            if canvas_through_acceptance:
                entropy = -(probabilities * processed.log_softmax(-1)).sum(-1)
                ordered, order = torch.sort(entropy, dim=-1)
                accepted_sorted = (ordered.cumsum(-1) - ordered) <= entropy_bound  # the sampler's rule
                accepted = torch.zeros_like(accepted_sorted).scatter(-1, order, accepted_sorted)
                canvas = torch.where(accepted, sampled, canvas)
            else:
                canvas = sampled
            signal = bottleneck_logits(mode, processed, sampled) if mode.feeds_signal else None
            if mode.mode in ("topk", "topp") and interpretable_tokens:
                signal = tracer.mark_interpretable(signal, f"{mode} tokens")
    return DiffusionDepths(str(mode), canvas_through_acceptance, depths, reports[0], reports[-1])


# ---------------------------------------------------------------------------------------------
# The paper's table

PAPER_NAIVE_RATIO = 28.6
PAPER_BOTTLENECK_RATIO = 1.1
#: The two ways of counting a top-k / top-p state. The paper's: a handful of tokens with their
#: probabilities is a state a person can read (it is what the logit lens shows), so the chain resets.
#: The strict one: the probabilities are continuous numbers that the next step computes with, so
#: nothing is cut.
INTERPRETABLE = "interpretable: paper's convention"
OPAQUE = "opaque probabilities"


def chain_depth(step_depths: list[int], n_steps: int) -> int:
    """Depth of the logits after ``n_steps`` chained steps, from the traced first steps.

    Each step runs the identical decoder, so depth follows d[s+1] = max(d[s] + a, b) for fixed a, b:
    once two consecutive increments agree, the chain continues with that increment. Traced steps
    are used as they are; beyond them the recurrence is extrapolated, and a chain that has not
    settled into it raises (trace more steps).
    """
    if n_steps <= len(step_depths):
        return max(step_depths[:n_steps])
    if len(step_depths) < 3:
        raise ValueError("extrapolating a depth chain needs at least 3 traced steps")
    last, previous = step_depths[-1] - step_depths[-2], step_depths[-2] - step_depths[-3]
    if last != previous:
        raise ValueError(
            f"the traced depths {step_depths} have not settled into a fixed per-step increment; trace more steps"
        )
    return step_depths[-1] + (n_steps - len(step_depths)) * last


@dataclass
class TransparencyRow:
    """One line of the table: a way of running the model, its depth and ratio to AR."""

    model: str
    signal: str
    steps: int | None
    depth: int
    ratio_to_ar: float
    paper_ratio: float | None = None
    note: str = ""


def transparency_table(
    diffusion: DiffusionGemmaForBlockDiffusion,
    ar: Gemma4ForCausalLM,
    step_counts: list[int],
    *,
    prompt_len: int = 16,
    topk: int = PAPER_TOPK,
    topp: float = PAPER_TOPP,
    trace_steps: int = 4,
    include_acceptance_variant: bool = True,
) -> tuple[list[TransparencyRow], dict]:
    """Depth of AR Gemma 4 per token and of DiffusionGemma under each signal mode, with ratios.

    ``step_counts`` are the chain lengths N to report (e.g. 48, the default maximum, and the mean
    number of steps a model uses); the first ``trace_steps`` steps of each mode are traced and
    longer chains follow :func:`chain_depth` (``trace_steps >= max(step_counts)`` traces them all).
    The paper's token bottleneck (``topk:K`` / ``topp:P``) appears twice: with its states counted as
    interpretable (the paper's convention, :data:`INTERPRETABLE`) and as opaque (:data:`OPAQUE`).
    """
    ar_report = ar_token_depth(ar, prompt_len)
    d_ar = ar_report.depth
    rows = [
        TransparencyRow("AR Gemma 4", "token (argmax)", 1, d_ar, 1.0, note="one decode step on the prompt's KV cache")
    ]
    traces: dict[str, DiffusionDepths] = {}
    variants = [("continuous", False, True), ("argmax", False, True), ("sample", False, True)]
    for token_mode in (f"topk:{topk}", f"topp:{topp:g}"):
        variants += [(token_mode, False, True), (token_mode, False, False)]
    variants.append(("none", False, True))
    if include_acceptance_variant:
        variants += [("continuous", True, True), ("argmax", True, True)]
    n_trace = max(3, min(trace_steps, max(step_counts)))
    for mode, through_acceptance, interpretable in variants:
        key = mode + (" +acceptance" if through_acceptance else "")
        if Bottleneck.parse(mode).mode in ("topk", "topp"):
            key += f" ({INTERPRETABLE if interpretable else OPAQUE})"
        traces[key] = diffusion_step_depths(
            diffusion,
            n_trace,
            mode,
            prompt_len=prompt_len,
            canvas_through_acceptance=through_acceptance,
            interpretable_tokens=interpretable,
        )
    first = traces["argmax"].step_depths
    rows.append(TransparencyRow("DiffusionGemma", "one step, no signal (step 0)", 1, first[0], first[0] / d_ar))
    rows.append(
        TransparencyRow(
            "DiffusionGemma",
            "one step, token signal",
            1,
            first[1],
            first[1] / d_ar,
            note="the self-conditioning input is a token (one-hot)",
        )
    )
    paper = {"continuous": PAPER_NAIVE_RATIO}
    for n_steps in step_counts:
        for key, trace in traces.items():
            depth = chain_depth(trace.step_depths, n_steps)
            mode = key.split(" ")[0]
            note = "canvas inherits the acceptance mask's depth" if trace.canvas_through_acceptance else ""
            if key.endswith(f"({INTERPRETABLE})"):
                paper[key] = PAPER_BOTTLENECK_RATIO  # the paper counts exactly these states as interpretable
                note = note or "top tokens and their probabilities read as interpretable (the paper's convention)"
            elif key.endswith(f"({OPAQUE})"):
                note = note or "the kept probabilities are continuous numbers: the chain runs on"
            rows.append(
                TransparencyRow(
                    "DiffusionGemma",
                    key,
                    n_steps,
                    depth,
                    depth / d_ar,
                    paper.get(key, paper.get(mode)) if not trace.canvas_through_acceptance else None,
                    note,
                )
            )
    details = {
        "ar_depth": d_ar,
        "ar_by_layer": _by_layer(ar_report),
        "traced_step_depths": {key: trace.step_depths for key, trace in traces.items()},
        "diffusion_step_by_layer": _by_layer(traces["argmax"].last_step),
        "steps_for_paper_naive_ratio": _steps_for_ratio(traces["continuous"].step_depths, d_ar, PAPER_NAIVE_RATIO),
    }
    return rows, details


def _steps_for_ratio(step_depths: list[int], d_ar: int, ratio: float) -> float:
    """Chain length at which the continuous chain reaches ``ratio`` × the AR depth."""
    increment = step_depths[-1] - step_depths[-2]
    return 1 + (ratio * d_ar - step_depths[0]) / increment


def _by_layer(report: DepthReport) -> dict[str, int]:
    """Critical-path cost per layer (and outside layers)."""
    import re

    grouped: dict[str, int] = {}
    for name, cost in report.by_module.items():
        match = re.search(r"layers\.(\d+)", name)
        key = f"layer {int(match.group(1)):02d}" if match else name
        grouped[key] = grouped.get(key, 0) + cost
    return dict(sorted(grouped.items()))


def format_table(rows: list[TransparencyRow]) -> str:
    """The table as Markdown."""
    lines = ["| model | self-conditioning signal | steps N | depth | × AR | paper |", "|---|---|---|---|---|---|"]
    for row in rows:
        paper = f"{row.paper_ratio}×" if row.paper_ratio is not None else ""
        steps = "" if row.steps is None else str(row.steps)
        lines.append(f"| {row.model} | {row.signal} | {steps} | {row.depth} | {row.ratio_to_ar:.2f}× | {paper} |")
    return "\n".join(lines)


def depth_models(config: str = "real", ar_path: str | None = None):
    """(diffusion, AR) meta models for ``config``: 'real', 'tiny', or a DiffusionGemma folder (with
    ``ar_path``, the folder of its AR twin)."""
    if config == "real":
        return diffusion_meta_model(real_config()), ar_meta_model(real_ar_text_config())
    if config == "tiny":
        return diffusion_meta_model(tiny_config()), ar_meta_model(tiny_text_config())
    diffusion_config = DiffusionGemmaConfig.from_pretrained(config)
    if ar_path is None:
        raise ValueError(f"a DiffusionGemma folder ({config}) needs the folder of its AR twin (ar_path=, --ar)")
    ar_config = json.loads((Path(ar_path) / "config.json").read_text())
    for key in ("architectures", "transformers_version", "dtype", "torch_dtype"):
        ar_config.pop(key, None)
    return diffusion_meta_model(diffusion_config), ar_meta_model(ar_config)


def depth_table(config: str = "real", step_counts=(48,), *, ar_path=None, prompt_len: int = 16, trace_steps: int = 4):
    """The paper's table for ``config``; rows and details (see :func:`transparency_table`)."""
    diffusion, ar = depth_models(config, ar_path)
    return transparency_table(
        diffusion,
        ar,
        sorted({int(n) for n in step_counts}, reverse=True),
        prompt_len=prompt_len,
        trace_steps=trace_steps,
    )
