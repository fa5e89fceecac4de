"""``Trajectory``: what the sampler did, step by step, block by block.

Shapes (``batch`` prompts, ``canvas`` = ``config.canvas_length``):

    StepRecord.canvas_in / sampled / argmax / canvas_out   LongTensor  [batch, canvas]
    StepRecord.accepted                                    BoolTensor  [batch, canvas]
    StepRecord.entropy                                     FloatTensor [batch, canvas]  (of the tempered logits)
    StepRecord.active                                      BoolTensor  [batch]          (row still denoising)
    StepRecord.logits (optional)                           FloatTensor [batch, canvas, vocab]  (raw, soft-capped)
    Trajectory.sequences                                   LongTensor  [batch, prompt + blocks * canvas]

Steps are numbered 0..n-1 in the order they run (``hf_step`` keeps transformers' countdown N..1);
blocks (canvases) 0... A loaded trajectory has no runtime state (KV caches); ``step_inputs`` on it
rebuilds the caches with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from diffinterp.records.modes import Bottleneck
from diffinterp.records.serialization import RecordError, load_records, require, require_keys, save_records

KIND = "diffinterp.Trajectory"
_STEP_TENSORS = ("canvas_in", "sampled", "argmax", "accepted", "canvas_out", "entropy", "active")
_TOP_TENSORS = ("prompt_ids", "attention_mask", "sequences", "tokens_per_forward")


@dataclass
class RngState:
    """Random-number-generator state before a draw: CPU (saved) and CUDA devices (in memory only)."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None = None

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass
class StepRecord:
    """One denoising step of one block (shapes in the module docstring)."""

    step: int
    hf_step: int
    temperature: float
    canvas_in: torch.Tensor
    sampled: torch.Tensor
    argmax: torch.Tensor
    accepted: torch.Tensor
    canvas_out: torch.Tensor
    entropy: torch.Tensor
    active: torch.Tensor
    logits: torch.Tensor | None = None
    rng_state: RngState | None = None


@dataclass
class BlockRuntime:
    """In-memory state needed to re-run a block's steps exactly (not saved)."""

    past_key_values: Any
    mask_mapping: dict[str, torch.Tensor]
    decoder_position_ids: torch.Tensor
    input_ids: torch.Tensor
    logits_processor: Any
    initial_self_conditioning: torch.Tensor | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    signal_memo: Any = None  # the last self-conditioning signal re-derived (diffinterp.core.replay)


@dataclass
class BlockRecord:
    """One canvas: its steps, where it starts, and the tokens it appended to the sequence."""

    block: int
    prefix_len: int
    steps: list[StepRecord]
    final_canvas: torch.Tensor
    runtime: BlockRuntime | None = None
    rng_state: RngState | None = None

    @property
    def n_steps(self) -> int:
        return len(self.steps)


@dataclass
class Trajectory:
    """The whole run: prompts, every block's steps, the final sequences and the settings used."""

    prompt_ids: torch.Tensor
    attention_mask: torch.Tensor
    sequences: torch.Tensor
    blocks: list[BlockRecord]
    bottleneck: str
    generation: dict[str, Any]
    canvas_length: int
    tokens_per_forward: torch.Tensor

    @property
    def steps(self) -> list[list[StepRecord]]:
        """``traj.steps[block][step]``."""
        return [block.steps for block in self.blocks]

    @property
    def steps_per_block(self) -> list[int]:
        return [block.n_steps for block in self.blocks]

    @property
    def batch_size(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.prompt_ids.shape[1]

    def block(self, block: int) -> BlockRecord:
        if not 0 <= block < len(self.blocks):
            raise IndexError(f"block {block} out of range: this trajectory has blocks 0..{len(self.blocks) - 1}")
        return self.blocks[block]

    def step(self, block: int, step: int) -> StepRecord:
        record = self.block(block)
        if not 0 <= step < record.n_steps:
            raise IndexError(
                f"step {step} out of range: block {block} ran {record.n_steps} steps (valid 0..{record.n_steps - 1})"
            )
        return record.steps[step]

    def stack(self, name: str, block: int = 0, *, active_only: bool = False) -> torch.Tensor:
        """One field of every step of ``block`` stacked: ``[steps, batch, canvas(, vocab)]``.

        ``active_only=True`` (floating-point fields: ``entropy``, ``logits``) sets the rows that had
        stopped denoising at a step to NaN, so per-step statistics (``nanmean``) read only the rows
        still denoising; :func:`active_mean` does the averaging."""
        valid = (*_STEP_TENSORS, "logits")
        if name not in valid:
            raise KeyError(f"unknown step field '{name}'; valid fields: {', '.join(valid)}")
        values = [getattr(step, name) for step in self.block(block).steps]
        if any(value is None for value in values):
            raise ValueError(f"'{name}' was not recorded: generate with record_logits=True")
        stacked = torch.stack(values)
        if not active_only:
            return stacked
        if not stacked.is_floating_point():
            raise TypeError(
                f"active_only=True masks with NaN, which needs a floating-point field; '{name}' is {stacked.dtype}: "
                "combine it with traj.stack('active', block) instead"
            )
        active = self.stack("active", block).to(stacked.device)
        return stacked.masked_fill(~active.view(*active.shape, *[1] * (stacked.dim() - 2)), float("nan"))

    def temperatures(self, block: int = 0) -> list[float]:
        return [step.temperature for step in self.block(block).steps]

    def new_tokens(self) -> torch.Tensor:
        """The generated part of ``sequences``: [batch, blocks * canvas]."""
        return self.sequences[:, self.prompt_len :]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write to one safetensors file (atomic); runtime state (KV caches) is not saved."""
        tensors: dict[str, torch.Tensor] = {
            "prompt_ids": self.prompt_ids,
            "attention_mask": self.attention_mask,
            "sequences": self.sequences,
            "tokens_per_forward": self.tokens_per_forward,
        }
        blocks_meta = []
        for record in self.blocks:
            tensors[f"block{record.block}.final_canvas"] = record.final_canvas
            if record.rng_state is not None:
                tensors[f"block{record.block}.rng_state"] = record.rng_state.cpu
            steps_meta = []
            for step in record.steps:
                prefix = f"block{record.block}.step{step.step}"
                for name in _STEP_TENSORS:
                    tensors[f"{prefix}.{name}"] = getattr(step, name)
                if step.logits is not None:
                    tensors[f"{prefix}.logits"] = step.logits
                if step.rng_state is not None:
                    tensors[f"{prefix}.rng_state"] = step.rng_state.cpu
                steps_meta.append({"step": step.step, "hf_step": step.hf_step, "temperature": step.temperature})
            blocks_meta.append({"block": record.block, "prefix_len": record.prefix_len, "steps": steps_meta})
        meta = {
            "bottleneck": self.bottleneck,
            "generation": self.generation,
            "canvas_length": self.canvas_length,
            "blocks": blocks_meta,
        }
        return save_records(path, KIND, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        """Read a trajectory saved by :meth:`save`; a :class:`~diffinterp.records.serialization.RecordError`
        names the field of any file that does not match its own description."""
        tensors, meta = load_records(path, KIND)
        require_keys(path, meta, ("bottleneck", "generation", "canvas_length", "blocks"), "meta")
        try:
            bottleneck = str(Bottleneck.parse(meta["bottleneck"]))
        except (TypeError, ValueError) as err:
            raise RecordError(path, "meta.bottleneck", str(err)) from err
        require(path, isinstance(meta["generation"], dict), "meta.generation", "must be a JSON object")
        canvas = meta["canvas_length"]
        require(
            path,
            isinstance(canvas, int) and canvas > 0,
            "meta.canvas_length",
            f"must be a positive int, got {canvas!r}",
        )
        for name in _TOP_TENSORS:
            require(path, name in tensors, name, "missing")
        batch = tensors["prompt_ids"].shape[0]
        require(path, tensors["prompt_ids"].dim() == 2, "prompt_ids", "must be [batch, prompt_len]")
        require(path, tensors["attention_mask"].shape == tensors["prompt_ids"].shape, "attention_mask",
                f"shape {list(tensors['attention_mask'].shape)} differs from prompt_ids {list(tensors['prompt_ids'].shape)}")  # fmt: skip
        used = set(_TOP_TENSORS)
        blocks = []
        require(path, isinstance(meta["blocks"], list), "meta.blocks", "must be a list")
        for b, block_meta in enumerate(meta["blocks"]):
            require_keys(path, block_meta, ("block", "prefix_len", "steps"), f"meta.blocks[{b}]")
            index = block_meta["block"]
            require(path, index == b, f"meta.blocks[{b}].block", f"blocks must be numbered 0.., got {index!r}")
            steps = []
            for s_, step_meta in enumerate(block_meta["steps"]):
                require_keys(path, step_meta, ("step", "hf_step", "temperature"), f"meta.blocks[{b}].steps[{s_}]")
                require(
                    path, step_meta["step"] == s_, f"meta.blocks[{b}].steps[{s_}].step", "steps must be numbered 0.."
                )
                prefix = f"block{index}.step{s_}"
                values = {}
                for name in _STEP_TENSORS:
                    key = f"{prefix}.{name}"
                    require(path, key in tensors, key, "listed in the metadata but not stored")
                    expected = (batch,) if name == "active" else (batch, canvas)
                    require(path, tuple(tensors[key].shape) == expected, key,
                            f"shape {list(tensors[key].shape)}, expected {list(expected)}")  # fmt: skip
                    values[name] = tensors[key]
                    used.add(key)
                logits = tensors.get(f"{prefix}.logits")
                if logits is not None:
                    require(path, tuple(logits.shape[:2]) == (batch, canvas) and logits.dim() == 3,
                            f"{prefix}.logits", f"shape {list(logits.shape)}, expected [{batch}, {canvas}, vocab]")  # fmt: skip
                    used.add(f"{prefix}.logits")
                rng = tensors.get(f"{prefix}.rng_state")
                used.add(f"{prefix}.rng_state")
                steps.append(StepRecord(**step_meta, **values, logits=logits,
                                        rng_state=RngState(rng) if rng is not None else None))  # fmt: skip
            final = f"block{index}.final_canvas"
            require(path, final in tensors, final, "listed in the metadata but not stored")
            require(path, tuple(tensors[final].shape) == (batch, canvas), final, "shape does not match the canvas")
            used |= {final, f"block{index}.rng_state"}
            block_rng = tensors.get(f"block{index}.rng_state")
            blocks.append(BlockRecord(index, block_meta["prefix_len"], steps, tensors[final],
                                      rng_state=RngState(block_rng) if block_rng is not None else None))  # fmt: skip
        extra = sorted(set(tensors) - used)
        require(path, not extra, "meta.blocks", f"the file stores {extra[:3]} that the metadata does not list")
        return cls(
            prompt_ids=tensors["prompt_ids"],
            attention_mask=tensors["attention_mask"],
            sequences=tensors["sequences"],
            blocks=blocks,
            bottleneck=bottleneck,
            generation=meta["generation"],
            canvas_length=canvas,
            tokens_per_forward=tensors["tokens_per_forward"],
        )


def active_mean(values: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Per-step mean over the rows still denoising: ``values`` ``[steps, batch, ...]``, ``active``
    ``[steps, batch]`` (``traj.stack("active", block)``) -> ``[steps, ...]``; NaN at a step where
    no row was active. Rows that stopped are frozen copies of their last step, and averaging them
    in would dilute every later step's statistic."""
    if values.shape[:2] != active.shape:
        raise ValueError(f"values {list(values.shape)} must start with active's [steps, batch] = {list(active.shape)}")
    mask = active.to(values.device, torch.bool).view(*active.shape, *[1] * (values.dim() - 2))
    total = torch.where(mask, values.double(), 0.0).sum(1)  # stopped rows left out, active ones as they are
    count = mask.double().sum(1)
    return (
        (total / count)
        .masked_fill(count == 0, float("nan"))
        .to(values.dtype if values.is_floating_point() else torch.float64)
    )


def step_field_names() -> list[str]:
    return [f.name for f in fields(StepRecord)]
