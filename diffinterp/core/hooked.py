"""``HookedDiffusionGemma``: TransformerLens hook points around an unmodified DiffusionGemma.

    hm = HookedDiffusionGemma(hf_model, tokenizer)
    traj = hm.generate(input_ids, max_new_tokens=16)              # == hf_model.generate(...)
    traj, cache = hm.run_with_cache(input_ids, names_filter="decoder.blocks.1.hook_resid_post")
    traj = hm.run_with_hooks(input_ids, fwd_hooks=[(name, fn)], steps=[3], positions=[0, 1])
    with hm.hooks(fwd_hooks=[(name, fn)], steps=[3]):
        traj = hm.generate(input_ids)
    kwargs = hm.step_inputs(traj, block=0, step=3)                # hm.model(**kwargs) re-runs a step

Hook names are listed in ``docs/hooks.md`` (``diffinterp hooks``). A hook function is
``fn(tensor, hook)``; ``hook.name``, ``hook.step``, ``hook.block`` say where it fired; returning a
tensor replaces the activation.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformer_lens.HookedRootModule import HookedRootModule
from transformers import DiffusionGemmaForBlockDiffusion

from diffinterp.core import hook_points as hp
from diffinterp.core import resid
from diffinterp.core.hook_shapes import hook_shape
from diffinterp.core.inputs import as_dtype, check_positions
from diffinterp.core.memory import budget, disk_budget
from diffinterp.core.replay import has_torch_hooks, note_step_logits, restore_runtime, step_inputs
from diffinterp.core.sampler import resolve_run_limits, sample
from diffinterp.records.cache import DenoisingCache, caching_taps
from diffinterp.records.files import atomic_folder
from diffinterp.records.streamed import DEFAULT_SHARD_BYTES, StreamedCache

NameOrFilter = str | Sequence[str] | Callable[[str], bool]
HookFn = Callable[..., Any]

_LAYER_OUTPUTS = {
    "hook_attn_out": "post_attention_layernorm",
    "hook_mlp_out": "post_feedforward_layernorm_1",
    "hook_moe_out": "post_feedforward_layernorm_2",
    "hook_ffn_out": "post_feedforward_layernorm",
}
_ATTENTION_OUTPUTS = {"hook_q": "q_norm", "hook_k": "k_norm", "hook_v": "v_norm"}
_ROUTER_OUTPUTS = {"hook_router_probs": 0, "hook_topk_weights": 1, "hook_topk_idx": 2}


@dataclass(frozen=True)
class HookTarget:
    """Where a user hook fires: steps, blocks (None = all) and canvas positions (None = all)."""

    steps: frozenset[int] | None = None
    blocks: frozenset[int] | None = None
    positions: tuple[int, ...] | None = None

    @classmethod
    def build(cls, steps=None, blocks=None, positions=None) -> HookTarget:
        return cls(
            steps=_int_set(steps, "steps"),
            blocks=_int_set(blocks, "blocks"),
            positions=None if positions is None else tuple(sorted(_int_set(positions, "positions"))),
        )

    def fires(self, step: int | None, block: int | None) -> bool:
        if self.steps is not None and step not in self.steps:
            return False
        return self.blocks is None or block in self.blocks


def _int_set(values, what: str) -> frozenset[int] | None:
    if values is None:
        return None
    if isinstance(values, int):
        values = [values]
    if isinstance(values, range):
        values = list(values)
    result = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} must be integers (got {value!r})")
        if value < 0:
            raise ValueError(f"{what} must be >= 0 (got {value}); {what} are numbered from 0")
        result.append(value)
    return frozenset(result)


def targeted(fn: HookFn, target: HookTarget) -> HookFn:
    """Wrap ``fn`` so it fires only at ``target``'s steps/blocks, and edits only its positions."""
    if target.steps is None and target.blocks is None and target.positions is None:
        return fn

    def hook(tensor: torch.Tensor, hook) -> Any:
        if not target.fires(hook.step, hook.block):
            return None
        result = fn(tensor, hook=hook)
        if result is None or target.positions is None or not isinstance(result, torch.Tensor):
            return result
        hp.check_replacement(hook, tensor, result)
        dim = hook.pos_dim if hook.pos_dim is not None else 1
        if max(target.positions) >= tensor.shape[dim]:
            raise IndexError(
                f"position {max(target.positions)} out of range for '{hook.name}', which has "
                f"{tensor.shape[dim]} positions (valid 0..{tensor.shape[dim] - 1})"
            )
        index = torch.tensor(target.positions, device=tensor.device)
        merged = tensor.clone()
        merged.index_copy_(dim, index, result.to(tensor.dtype).index_select(dim, index))
        return merged

    hook.__name__ = getattr(fn, "__name__", "hook")
    return hook


def vouching(fn: HookFn, context: hp.RunContext) -> HookFn:
    """Wrap ``fn`` so the hook point takes its replacement as finite (``hooks(check_finite=False)``)
    when it is the hook point's only forward hook."""

    def hook(tensor: torch.Tensor, hook) -> Any:
        result = fn(tensor, hook=hook)
        # only a sole hook's word counts: another hook at this point may have fed it a NaN
        if isinstance(result, torch.Tensor) and len(hook._forward_hooks) == 1:
            context.vouched = id(result)
        return result

    hook.__name__ = getattr(fn, "__name__", "hook")
    return hook


def targeted_tap(tap, target: HookTarget):
    """Wrap ``tap`` so it runs only at ``target``'s steps/blocks (the tap itself when it has none)."""
    if target.steps is None and target.blocks is None:
        return tap

    def gated(tensor: torch.Tensor, hook) -> None:
        if target.fires(hook.step, hook.block):
            tap(tensor, hook)

    return gated


class _Container(nn.Module):
    """A node of the hook-point tree (names mirror TransformerLens paths)."""


class HookedDiffusionGemma(HookedRootModule):
    """TransformerLens-style hook points on a ``DiffusionGemmaForBlockDiffusion``, left unmodified.

    The HF model is ``self.model``; hook points live under ``self.decoder`` and ``self.encoder``.
    With no user hooks, no torch hook is attached to any HF module.
    """

    def __init__(self, model: DiffusionGemmaForBlockDiffusion, tokenizer=None, metadata: dict | None = None):
        super().__init__()
        if not isinstance(model, DiffusionGemmaForBlockDiffusion):
            raise TypeError(
                f"HookedDiffusionGemma wraps a transformers DiffusionGemmaForBlockDiffusion, got {type(model).__name__}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = dict(metadata or {})  # the checkpoint's diffinterp.json (organism, tasks), if any
        self.context = hp.RunContext()
        self._original_attn_implementation: str | None = None
        self._pattern_hooks_attached = 0
        self._warned_eager = False
        self._targets: list[HookTarget] = []
        # hook shapes by (name, batch, prompt_len, block): sizing a cache before every caching run
        # recomputes the same few dozen (the config never changes under a HookedDiffusionGemma)
        self._shapes: dict[tuple[str, int, int, int], tuple[int, ...]] = {}
        self.decoder = self._build_stack("decoder")
        self.encoder = self._build_stack("encoder")
        self.setup()

    # ------------------------------------------------------------------ construction
    @property
    def config(self):
        return self.model.config

    @property
    def text_config(self):
        return self.model.config.text_config

    def _point(self, attach, pos_dim: int = 1, on_change=None) -> hp.StepHookPoint:
        return hp.StepHookPoint(self.context, attach, pos_dim=pos_dim, on_attach_change=on_change)

    def _build_stack(self, stack: str) -> _Container:
        if stack == "decoder":
            hf_stack = self.model.model.decoder
        else:
            hf_stack = self.model.model.encoder.language_model
        node = _Container()
        node.hook_embed = self._point(hp.output_adapter(hf_stack.embed_tokens))
        if stack == "decoder":
            sc_module = hf_stack.self_conditioning
            node.sc = _Container()
            node.sc.hook_soft_embed = self._point(hp.input_adapter(sc_module, 1, "self_conditioning_signal"))
            node.sc.hook_signal = self._point(hp.output_adapter(sc_module.down_proj))
            node.sc.hook_out = self._point(hp.output_adapter(sc_module))
        node.blocks = nn.ModuleList([self._build_block(layer) for layer in hf_stack.layers])
        node.ln_final = _Container()
        node.ln_final.hook_normalized = self._point(hp.output_adapter(hf_stack.norm))
        if stack == "decoder":
            node.hook_logits = self._point(hp.logits_adapter(self.model))
        return node

    def _build_block(self, layer: nn.Module) -> _Container:
        block = _Container()
        block.hook_resid_pre = self._point(hp.input_adapter(layer, 0, "hidden_states"))
        block.hook_attn_out = self._point(hp.output_adapter(layer.post_attention_layernorm))
        block.hook_resid_mid = self._point(
            hp.input_adapter(layer.pre_feedforward_layernorm, 0, "hidden_states", in_place=True)
        )
        for hook_name, module_name in _LAYER_OUTPUTS.items():
            if hook_name != "hook_attn_out":
                setattr(block, hook_name, self._point(hp.output_adapter(getattr(layer, module_name))))
        block.hook_resid_post = self._point(hp.output_adapter(layer))

        attention = layer.self_attn
        n_heads = self.text_config.num_attention_heads
        block.attn = _Container()
        for hook_name, module_name in _ATTENTION_OUTPUTS.items():
            setattr(block.attn, hook_name, self._point(hp.output_adapter(getattr(attention, module_name))))
        block.attn.hook_z = self._point(
            hp.input_adapter(
                attention.o_proj,
                0,
                "input",
                view=lambda z: hp.heads_view(z, n_heads),
                unview=lambda new, original: new.reshape(original.shape),
            )
        )
        block.attn.hook_pattern = self._point(
            hp.pattern_adapter(attention), pos_dim=2, on_change=self._pattern_attach_changed
        )
        block.moe = _Container()
        layer_shape = hp.LayerShape(layer)
        for hook_name, index in _ROUTER_OUTPUTS.items():
            setattr(block.moe, hook_name, self._point(hp.router_adapter(layer_shape, layer.router, index)))
        return block

    def setup(self) -> None:
        """Index the hook points only: HF modules are left untouched (no ``name`` attribute added)."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name.startswith("model.") or name == "model":
                continue
            if isinstance(module, hp.StepHookPoint):
                module.name = name
                self.mod_dict[name] = module
                self.hook_dict[name] = module

    # ------------------------------------------------------------------ attention implementation
    def _pattern_attach_changed(self, _point: hp.StepHookPoint, attached: bool) -> None:
        """Switch to the hooked eager attention while any pattern hook is attached."""
        self._pattern_hooks_attached += 1 if attached else -1
        if attached and self._pattern_hooks_attached == 1:
            current = self.model.config._attn_implementation
            if current != hp.HOOKED_EAGER:
                self._original_attn_implementation = current
                if not self._warned_eager:
                    warnings.warn(
                        f"attention-pattern hooks need eager attention: switching from '{current}' to "
                        f"'{hp.HOOKED_EAGER}' (transformers' eager kernel) while they are attached; "
                        "outputs may differ from the fused kernel by floating-point rounding",
                        stacklevel=4,
                    )
                    self._warned_eager = True
                self.model.set_attn_implementation(hp.HOOKED_EAGER)
        elif not attached and self._pattern_hooks_attached == 0 and self._original_attn_implementation:
            self.model.set_attn_implementation(self._original_attn_implementation)
            self._original_attn_implementation = None

    # ------------------------------------------------------------------ names
    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def resolve_names(self, names: NameOrFilter | None) -> list[str]:
        """Hook names selected by a name, a glob pattern, a list of these, a predicate, or None (all).

        Unknown names raise a ``KeyError`` naming the closest valid names.
        """
        if names is None:
            return self.hook_names
        if callable(names):
            selected = [name for name in self.hook_dict if names(name)]
            if not selected:
                raise KeyError("the names filter matched no hook point; see `diffinterp hooks` for the names")
            return selected
        if isinstance(names, str):
            names = [names]
        selected: list[str] = []
        for name in names:
            if any(char in name for char in "*?["):
                matches = fnmatch.filter(self.hook_names, name)
                if not matches:
                    raise KeyError(f"pattern '{name}' matched no hook point; see `diffinterp hooks` for the names")
                selected.extend(matches)
            elif name in self.hook_dict:
                selected.append(name)
            else:
                raise KeyError(self._unknown_name_message(name))
        return list(dict.fromkeys(selected))

    def _unknown_name_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.hook_names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown hook '{name}'{hint} (`diffinterp hooks` lists all {len(self.hook_names)} names)"

    def hook_shape(self, name: str, *, batch: int = 1, prompt_len: int = 16, block: int = 0) -> tuple[int, ...]:
        """The shape hook ``name`` has in ``block`` (see ``diffinterp.core.hook_shapes``)."""
        self.resolve_names(name)
        return hook_shape(self.config, name, batch=batch, prompt_len=prompt_len, block=block)

    # ------------------------------------------------------------------ hooks
    def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False):
        if not callable(hook):
            raise TypeError(f"the hook for '{hook_point_name}' must be callable fn(tensor, hook), got {hook!r}")

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:
        for resolved in self.resolve_names(name):
            self.check_and_add_hook(
                self.hook_dict[resolved],
                resolved,
                hook,
                dir=dir,
                is_permanent=is_permanent,
                level=level,
                prepend=prepend,
            )

    def _enable_hook(self, name, hook, dir) -> None:
        for resolved in self.resolve_names(name):
            self.check_hooks_to_add(self.hook_dict[resolved], resolved, hook, dir=dir)
            self.hook_dict[resolved].add_hook(hook, dir=dir, level=self.context_level)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Iterable[tuple[NameOrFilter, HookFn]] = (),
        bwd_hooks: Iterable[tuple[NameOrFilter, HookFn]] = (),
        *,
        steps: Iterable[int] | int | None = None,
        blocks: Iterable[int] | int | None = None,
        positions: Iterable[int] | int | None = None,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        check_finite: bool = True,
    ) -> Iterator[HookedDiffusionGemma]:
        """Attach hooks for the ``with`` body; they are removed on exit, also after an error.

        ``steps`` / ``blocks`` restrict where the hooks fire (decoder steps; encoder passes have
        step None, so a ``steps`` filter skips them); ``positions`` restricts which positions a
        returned replacement may change (the hook still sees the whole tensor).
        ``check_finite=False``: these hooks vouch that what they return is finite, so a hook point
        where one of them is the only hook skips its NaN/inf check (for instruments that write
        recorded activations checked once beforehand, as batched patching does); shapes are
        still checked, and a hook point with other hooks too checks as usual.
        """
        target = HookTarget.build(steps, blocks, positions)
        fwd = [(name, targeted(fn, target)) for name, fn in fwd_hooks]
        if not check_finite:
            fwd = [(name, vouching(fn, self.context)) for name, fn in fwd]
        bwd = [(name, targeted(fn, target)) for name, fn in bwd_hooks]
        self._targets.append(target)
        try:
            with (
                self.context.claim(),
                super().hooks(fwd, bwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts),
            ):
                yield self
        finally:
            self._targets.remove(target)

    @contextmanager
    def taps(
        self,
        taps: Iterable[tuple[NameOrFilter, Callable[[torch.Tensor, hp.StepHookPoint], None]]],
        *,
        steps: Iterable[int] | int | None = None,
        blocks: Iterable[int] | int | None = None,
    ) -> Iterator[HookedDiffusionGemma]:
        """Attach read-only taps, ``tap(activation, hook_point)``, for the ``with`` body; removed on
        exit, also after an error.

        A tap sees the activation after every user hook at its hook point (what the model goes on
        with) and cannot replace it: what a cache records (``run_with_cache`` uses them). It costs
        one Python call per activation, where a user hook also passes TransformerLens's wrapper and
        the replacement check. ``steps`` / ``blocks`` as in :meth:`hooks`.
        """
        target = HookTarget.build(steps, blocks)
        resolved = [(point, tap) for names, tap in taps for point in self.resolve_names(names)]
        for point, tap in resolved:
            if not callable(tap):
                raise TypeError(f"the tap for '{point}' must be callable tap(activation, hook_point), got {tap!r}")
        removers: list[Callable[[], None]] = []
        self._targets.append(target)
        try:
            with self.context.claim():
                for point, tap in resolved:
                    removers.append(self.hook_dict[point].add_tap(targeted_tap(tap, target)))
                yield self
        finally:
            for remove in reversed(removers):
                remove()
            self._targets.remove(target)

    def check_targets(self, n_steps: int, n_blocks: int) -> None:
        """Raise if an active hook targets a step or block this run can never reach."""
        for target in self._targets:
            for what, values, limit in (("step", target.steps, n_steps), ("block", target.blocks, n_blocks)):
                bad = sorted(v for v in (values or ()) if v >= limit)
                if bad:
                    raise ValueError(
                        f"hook targets {what} {bad[0]}, out of range: this run has at most {limit} "
                        f"{what}s (valid {what}s 0..{limit - 1})"
                    )

    def reset_hooks(self, clear_contexts=True, direction="both", including_permanent=False, level=None):
        super().reset_hooks(clear_contexts, direction, including_permanent, level)

    @property
    def attached_hook_points(self) -> list[str]:
        """Names of hook points whose adapter is currently attached to an HF module."""
        return [name for name, point in self.hook_dict.items() if point.is_attached]

    # ------------------------------------------------------------------ running
    def to_tokens(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize prompts (left-padded) into ``input_ids`` and ``attention_mask``."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass input_ids (a LongTensor [batch, prompt_len])")
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts given: pass a prompt string or a non-empty list of them")
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts][:3]}")
        self.tokenizer.padding_side = "left"
        encoded = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        device = self.model.device
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    def to_str_tokens(self, text) -> list[str] | list[list[str]]:
        """Token strings (TransformerLens's ``to_str_tokens``): of a prompt string (as ``to_tokens``
        tokenises it, without padding), of a 1-D id tensor or list, or per row of a 2-D id tensor."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: token ids have no strings")
        if isinstance(text, str):
            return self.tokenizer.convert_ids_to_tokens(self.tokenizer(text)["input_ids"])
        ids = torch.as_tensor(text)
        if ids.dim() == 2:
            return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
        if ids.dim() != 1 or ids.is_floating_point():
            raise ValueError(
                f"to_str_tokens takes a string or integer ids of 1 or 2 dims; got {list(ids.shape)} {ids.dtype}"
            )
        return self.tokenizer.convert_ids_to_tokens(ids.tolist())

    def to_string(self, ids, *, skip_special_tokens: bool = False) -> str | list[str]:
        """Ids back to text (TransformerLens's ``to_string``): a string for 1-D ids, one per row for
        2-D. Special tokens (``<eos>``, ``<pad>``) are kept unless ``skip_special_tokens``."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: token ids have no strings")
        ids = torch.as_tensor(ids)
        if ids.dim() == 2:
            return [self.tokenizer.decode(row.tolist(), skip_special_tokens=skip_special_tokens) for row in ids]
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------ the residual stream, taken apart (core/resid.py)
    def accumulated_resid(self, cache: DenoisingCache, step: int, block: int = 0, layer: int | None = None, **kwargs):
        """The residual entering each layer at one step: ``[layer + 1, batch, pos, d_model]``
        (:func:`diffinterp.core.resid.accumulated_resid`: ``incl_mid``, ``apply_ln``, ``positions``,
        ``return_labels``)."""
        return resid.accumulated_resid(self.model, cache, step, block, layer, **kwargs)

    def decompose_resid(self, cache: DenoisingCache, step: int, block: int = 0, layer: int | None = None, **kwargs):
        """The residual as the sum of what wrote it (sc_out, each layer's attn_out and ffn_out)
        (:func:`diffinterp.core.resid.decompose_resid`)."""
        return resid.decompose_resid(self.model, cache, step, block, layer, **kwargs)

    def stack_head_results(self, cache: DenoisingCache, step: int, block: int = 0, layer: int | None = None, **kwargs):
        """Every head's contribution to the residual, ``[layers * heads, batch, pos, d_model]``
        (:func:`diffinterp.core.resid.stack_head_results`)."""
        return resid.stack_head_results(self.model, cache, step, block, layer, **kwargs)

    def head_results(self, cache: DenoisingCache, step: int, layer: int, block: int = 0, *, residual: bool = True):
        """One layer's heads, ``[batch, pos, heads, d_model]`` (:func:`diffinterp.core.resid.head_results`)."""
        return resid.head_results(self.model, cache, step, layer, block, residual=residual)

    def apply_ln_to_stack(self, stack: torch.Tensor, cache: DenoisingCache, step: int, block: int = 0, positions=None):
        """Scale a residual stack as the final norm scales the residual (:func:`diffinterp.core.resid.apply_ln_to_stack`)."""
        return resid.apply_ln_to_stack(self.model, stack, cache, step, block, positions)

    def generate(self, input_ids, **kwargs):
        """Run the instrumented sampler; a :class:`~diffinterp.records.trajectory.Trajectory`.

        Same arguments as ``hf_model.generate`` plus ``bottleneck=`` (continuous | argmax | topk:K |
        sample | none), ``record_logits=``, ``progress=``, ``enable_grad=`` and ``replay=`` (a
        trajectory whose random draws to reuse); ``input_ids`` may be prompt strings.
        """

        if isinstance(input_ids, (str, list)) and (isinstance(input_ids, str) or isinstance(input_ids[0], str)):
            input_ids, attention_mask = self.to_tokens(input_ids)
            kwargs.setdefault("attention_mask", attention_mask)
        with self.context.claim(), self.context.run("generate"):
            return sample(self, input_ids, **kwargs)

    def forward(self, input_ids, **kwargs):
        return self.generate(input_ids, **kwargs)

    def run_with_hooks(
        self,
        input_ids,
        fwd_hooks: Iterable[tuple[NameOrFilter, HookFn]] = (),
        bwd_hooks: Iterable[tuple[NameOrFilter, HookFn]] = (),
        *,
        steps=None,
        blocks=None,
        positions=None,
        **gen_kwargs,
    ):
        """Generate with temporary hooks (removed afterwards, also on error); the Trajectory."""
        with self.hooks(fwd_hooks, bwd_hooks, steps=steps, blocks=blocks, positions=positions):
            return self.generate(input_ids, **gen_kwargs)

    def run_with_cache(
        self,
        input_ids,
        names_filter: NameOrFilter | None = None,
        *,
        steps=None,
        blocks=None,
        positions=None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_bytes: int | str | None = "auto",
        store: str | Path | None = None,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        **gen_kwargs,
    ):
        """Generate and record activations at every (step, block); ``(trajectory, cache)``.

        ``names_filter``, ``steps``, ``blocks`` and ``positions`` (canvas positions; pattern query
        positions) select what is stored; ``device`` / ``dtype`` where and how. ``max_bytes`` raises
        before the run if the cache could exceed it: ``"auto"`` (default) is 80% of the memory free
        where the cache goes (:mod:`diffinterp.core.memory`), an int a budget, ``None`` no check.

        ``store=DIR`` streams the cache to disk as the run produces it
        (:mod:`diffinterp.records.streamed`): at most ``shard_bytes`` (default 256 MiB) plus one
        activation is held in memory; the returned cache reads from the shards, and
        ``DenoisingCache.load(DIR)`` opens the folder later. The folder appears whole when the run
        ends (an earlier one there is replaced); after an error it is left as it was. ``max_bytes``
        then bounds the disk the cache may take (``"auto"``: 80% of the free disk space).
        """

        names = self.resolve_names(names_filter)
        check_positions(positions if positions is None or not isinstance(positions, int) else [positions],
                        self.config.canvas_length)  # fmt: skip
        dtype = as_dtype(dtype, "dtype")
        if store is not None and device not in (None, "cpu", torch.device("cpu")):
            raise ValueError(f"store= writes the cache to disk from the CPU; drop device={device!r} (or store=)")
        if store is not None and Path(store).is_dir() and any(Path(store).iterdir()):
            if not (Path(store) / "index.json").is_file():
                raise ValueError(f"{store} is a folder with files but no cache store (no index.json): it would be "
                                 "replaced whole; give an empty or new folder, or an earlier store=")  # fmt: skip
        limit = disk_budget(max_bytes, store) if store is not None else budget(max_bytes, device or self.model.device)
        cache = DenoisingCache(device=device, dtype=dtype, max_bytes=None if store is not None else limit)
        target = HookTarget.build(steps, blocks, positions)
        if limit is not None:
            estimate = self.estimate_cache_bytes(
                input_ids,
                names,
                steps=target.steps,
                blocks=target.blocks,
                positions=target.positions,
                dtype=dtype,
                **gen_kwargs,
            )
            cache.check_budget(estimate, what="the estimated cache for this run")
        if store is None:
            with self.taps(
                caching_taps(cache, names, target.positions, where=self.context), steps=steps, blocks=blocks
            ):
                trajectory = self.generate(input_ids, **gen_kwargs)
            return trajectory, cache
        with atomic_folder(store) as folder:  # the folder appears whole at the end, or not at all
            cache = StreamedCache(folder, shard_bytes=shard_bytes, dtype=dtype)
            with self.taps(
                caching_taps(cache, names, target.positions, where=self.context), steps=steps, blocks=blocks
            ):
                trajectory = self.generate(input_ids, **gen_kwargs)
            cache.finish()
        cache.relocate(store)
        return trajectory, cache

    def estimate_cache_bytes(
        self, input_ids, names_filter=None, *, steps=None, blocks=None, positions=None, dtype=None, **gen_kwargs
    ) -> int:
        """Upper bound on the bytes a ``run_with_cache`` with these filters stores (every step run).

        Linear in the number of hooks plus the number of canvases: shapes repeat across blocks except
        the prompt-side encoder pass and the attention patterns' key axis, summed once per layer type.
        """
        names = self.resolve_names(names_filter)
        if isinstance(input_ids, (str, list)):
            input_ids, _ = self.to_tokens(input_ids)
        batch, prompt_len = input_ids.shape
        n_steps, n_blocks = resolve_run_limits(self.model, prompt_len, **gen_kwargs)
        step_count = n_steps if steps is None else len([s for s in steps if s < n_steps])
        block_ids = list(range(n_blocks)) if blocks is None else [b for b in blocks if b < n_blocks]
        layer_types = self.text_config.layer_types
        pattern_numel: dict[tuple[str, str], int] = {}  # (stack, layer type) -> elements summed over blocks
        model_dtype = self.model.dtype  # a walk over the parameters: read once, not per hook
        total = 0
        for name in names:
            encoder = name.startswith("encoder.")
            count = (0 if steps is not None else 1) if encoder else step_count
            if count == 0 or not block_ids:
                continue
            point, element = self.hook_dict[name], _element_size(name, dtype, model_dtype)

            def shape(block: int, name: str = name) -> list[int]:
                key = (name, batch, prompt_len, block)
                if key not in self._shapes:
                    self._shapes[key] = hook_shape(self.config, name, batch=batch, prompt_len=prompt_len, block=block)
                return list(self._shapes[key])

            first = shape(block_ids[0])
            if positions is not None:
                first[point.pos_dim] = len(positions)
            if name.endswith("hook_pattern"):  # the key axis grows with the blocks (up to a sliding window)
                layer = int(name.split(".blocks.", 1)[1].split(".", 1)[0])
                key = (name.split(".", 1)[0], layer_types[layer])
                if key not in pattern_numel:
                    sizes = []
                    for block in block_ids:
                        dims = shape(block)
                        if positions is not None:
                            dims[point.pos_dim] = len(positions)
                        sizes.append(math.prod(dims))
                    pattern_numel[key] = sum(sizes)
                total += pattern_numel[key] * element * count
            elif encoder:  # the prompt pass (block 0) differs from the canvas passes after it
                later = [b for b in block_ids if b > 0]
                prompt = [b for b in block_ids if b == 0]
                numel = (math.prod(shape(0)) if prompt else 0) + (
                    math.prod(shape(later[0])) * len(later) if later else 0
                )
                total += numel * element * count
            else:
                total += math.prod(first) * len(block_ids) * element * count
        return total

    def step_inputs(self, trajectory, block: int, step: int) -> dict[str, Any]:
        """The exact decoder inputs of one recorded step: ``hm.model(**kwargs).logits`` re-runs it.

        Keys: ``decoder_input_ids`` (the canvas fed in), ``self_conditioning_logits`` (None at
        step 0 and in bottleneck mode 'none'), ``decoder_attention_mask`` (the per-layer-type mask
        mapping), ``past_key_values`` (the encoder KV cache of that block), ``decoder_position_ids``.
        """

        with self.context.claim(), self.context.quiet():  # a replay of recorded steps: no user hook fires
            return step_inputs(self, trajectory, block, step)

    def restore_runtime(self, trajectory):
        """Rebuild the KV caches of a trajectory loaded from disk, so its steps can be re-run."""

        with self.context.claim(), self.context.quiet():
            return restore_runtime(self, trajectory)

    def run_step(self, trajectory, block: int, step: int, fwd_hooks=(), **target):
        """Re-run one recorded decoder step (with optional hooks); its raw logits [batch, canvas, vocab]."""
        with self.context.claim():
            kwargs = self.step_inputs(trajectory, block, step)
            with self.hooks(fwd_hooks, **target), torch.no_grad(), self.context.run("run_step"):
                self.context.stack, self.context.block, self.context.step = "decoder", block, step
                unhooked = not has_torch_hooks(self.model)
                logits = self.model(**kwargs).logits
                self.context.raise_if_nonfinite()
            if unhooked:  # the recorded step's own logits: the next step's signal needs no second pass
                note_step_logits(self, trajectory, block, step, logits)
            return logits


def _element_size(name: str, dtype: torch.dtype | None, model_dtype: torch.dtype) -> int:
    if name.endswith("hook_topk_idx"):
        return torch.long.itemsize
    if name.endswith(("hook_router_probs", "hook_logits")) and dtype is None:
        return 4  # computed in float32 by the model
    return (dtype or model_dtype).itemsize
