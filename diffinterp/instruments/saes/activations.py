"""Activations for sparse autoencoders, collected from the instrumented sampler, step by step.

    spec = ActivationSpec("decoder.blocks.2.hook_resid_post", steps=range(0, 8), positions="masked")
    rows, where = step_activations(hm, input_ids, attention_mask, spec)   # [n, d_in], [n, 4]
    for batch in activation_stream(hm, prompt_batches, spec, batch_size=256):   # [256, d_in] each
        ...

``positions`` chooses which canvas positions of a step feed training: ``"all"``; ``"masked"``, the
positions no earlier step of the block has accepted (their input token is still noise); or
``"accepted"``, those some earlier step accepted (their input token is a committed sample). Rows
whose block has stopped denoising are never used. ``where`` gives each row's (prompt row, block,
step, position), so any activation can be traced back to its trajectory.

The stream runs one prompt batch at a time, keeps at most ``buffer_size`` activations plus one
batch's, shuffles them with a seeded generator and hands out ``batch_size`` rows at a time: the
full dataset never has to be in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

POSITION_SETS = ("all", "masked", "accepted")


@dataclass(frozen=True)
class ActivationSpec:
    """Which activations feed an SAE: one hook, the decoder steps (None: every step), the positions."""

    hook: str
    steps: tuple[int, ...] | None = None
    positions: str = "all"

    def __post_init__(self):
        if self.positions not in POSITION_SETS:
            raise ValueError(f"positions must be one of {', '.join(POSITION_SETS)}; got {self.positions!r}")
        if not self.hook.startswith("decoder."):
            raise ValueError(
                f"'{self.hook}' is not a decoder hook: SAEs over denoising time read the decoder "
                "(encoder hooks run once per block, with no step); give a decoder.* hook name"
            )
        if self.steps is not None:
            steps = tuple(sorted({int(s) for s in self.steps}))
            if not steps or steps[0] < 0:
                raise ValueError(f"steps must be non-negative step indices, got {list(self.steps)}")
            object.__setattr__(self, "steps", steps)

    def describe(self) -> str:
        steps = "every step" if self.steps is None else f"steps {format_steps(self.steps)}"
        return f"{self.hook}, {steps}, {self.positions} positions"


def format_steps(steps: Iterable[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2,5"``."""
    steps = sorted(steps)
    runs, start = [], None
    for i, step in enumerate(steps):
        if start is None:
            start = step
        if i + 1 == len(steps) or steps[i + 1] != step + 1:
            runs.append(f"{start}-{step}" if step != start else f"{step}")
            start = None
    return ",".join(runs)


def parse_steps(text: str | None) -> tuple[int, ...] | None:
    """``"0-7"``, ``"0,2,4"``, ``"3"`` or ``"all"`` / None (every step) -> step indices."""
    if text is None or text.strip() in ("", "all"):
        return None
    steps: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if high < low:
                    raise ValueError
                steps.update(range(low, high + 1))
            else:
                steps.add(int(part))
        except ValueError:
            raise ValueError(f"steps {text!r}: give step indices like '0-7', '0,2,4' or 'all'") from None
    if min(steps) < 0:
        raise ValueError(f"steps {text!r}: step indices start at 0")
    return tuple(sorted(steps))


def flat_features(activation: torch.Tensor, name: str) -> torch.Tensor:
    """A hook's activation as ``[batch, pos, d_in]`` (per-head hooks have their heads concatenated)."""
    if name.endswith("hook_pattern"):
        raise ValueError(f"'{name}' is an attention pattern ([batch, heads, pos, kv]); SAEs read per-position vectors")
    if activation.dim() == 4:
        return activation.flatten(2)
    if activation.dim() != 3:
        raise ValueError(f"'{name}' has shape {list(activation.shape)}; SAEs need [batch, pos, d] activations")
    return activation


def sae_input(sae, activation: torch.Tensor, name: str) -> torch.Tensor:
    """``[batch * pos, d_in]``: a hook's activation as the rows ``sae`` reads, in its dtype; a clear
    error when the widths differ (an SAE of another hook or model)."""
    x = flat_features(activation, name)
    if x.shape[-1] != sae.W_enc.shape[0]:
        raise ValueError(
            f"'{name}' has {x.shape[-1]} features per position and the SAE reads {sae.W_enc.shape[0]}: "
            "give the SAE trained on this hook of this model"
        )
    return x.reshape(-1, x.shape[-1]).to(sae.W_enc.dtype)


def position_masks(trajectory, block: int, positions: str) -> list[torch.Tensor]:
    """One ``[batch, canvas]`` bool mask per step of ``block``: the positions ``positions`` selects
    at that step (active rows only); what was accepted before is carried from step to step."""
    masks, accepted_before = [], None
    for current in trajectory.blocks[block].steps:
        active = current.active[:, None].expand_as(current.accepted)
        if accepted_before is None:
            accepted_before = torch.zeros_like(current.accepted)
        if positions == "all":
            masks.append(active.clone())
        else:
            masks.append(active & (accepted_before if positions == "accepted" else ~accepted_before))
        accepted_before = accepted_before | (current.accepted & active)
    return masks


def position_mask(trajectory, block: int, step: int, positions: str) -> torch.Tensor:
    """``[batch, canvas]`` bool: the positions of ``step`` that ``positions`` selects (active rows only)."""
    return position_masks(trajectory, block, positions)[step]


def step_activations(hm, input_ids, attention_mask, spec: ActivationSpec, **gen_kwargs):
    """One generation of a prompt batch; the selected activations ``[n, d_in]`` (float32, CPU) and
    where each came from, ``[n, 4]`` (prompt row, block, step, position)."""
    trajectory, cache = hm.run_with_cache(
        input_ids, names_filter=[spec.hook], steps=spec.steps, attention_mask=attention_mask, **gen_kwargs
    )
    rows, where, masks = [], [], {}
    for name, step, block in sorted(cache.keys(), key=lambda key: (key[2], key[1])):
        if block not in masks:
            masks[block] = position_masks(trajectory, block, spec.positions)
        mask = masks[block][step]
        activation = flat_features(cache.get(name, step, block), name)
        index = mask.nonzero().cpu()  # (row, position) pairs, row-major like activation[mask]
        origin = torch.empty(len(index), 4, dtype=torch.long)
        origin[:, 0], origin[:, 1], origin[:, 2], origin[:, 3] = index[:, 0], block, step, index[:, 1]
        rows.append(activation[mask].float().cpu())
        where.append(origin)
    if not rows:
        raise ValueError(
            f"no activations of {spec.describe()}: this run has {trajectory.steps_per_block} steps per block"
        )
    return torch.cat(rows), torch.cat(where)


def activation_stream(
    hm,
    prompt_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    spec: ActivationSpec,
    *,
    batch_size: int = 256,
    buffer_size: int = 16384,
    seed: int = 0,
    **gen_kwargs,
) -> Iterator[torch.Tensor]:
    """Shuffled training batches ``[batch_size, d_in]`` from generations of ``prompt_batches``
    (``(input_ids, attention_mask)`` pairs; an endless iterable gives an endless stream)."""
    if batch_size < 1 or buffer_size < batch_size:
        raise ValueError(f"need 1 <= batch_size <= buffer_size, got batch_size={batch_size}, buffer_size={buffer_size}")
    generator = torch.Generator().manual_seed(seed)
    buffer = torch.empty(0)
    for input_ids, attention_mask in prompt_batches:
        rows, _ = step_activations(hm, input_ids, attention_mask, spec, **gen_kwargs)
        buffer = rows if buffer.numel() == 0 else torch.cat([buffer, rows])
        if len(buffer) < buffer_size:
            continue
        buffer = buffer[torch.randperm(len(buffer), generator=generator)]
        while len(buffer) >= buffer_size // 2 + batch_size:  # keep half mixed with the next runs
            yield buffer[:batch_size]
            buffer = buffer[batch_size:]
    buffer = buffer[torch.randperm(len(buffer), generator=generator)]
    for start in range(0, len(buffer) - batch_size + 1, batch_size):
        yield buffer[start : start + batch_size]
