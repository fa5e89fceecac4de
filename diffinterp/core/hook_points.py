"""Hook points bound to the modules of an unmodified transformers DiffusionGemma.

A :class:`StepHookPoint` is a TransformerLens ``HookPoint`` (an identity module) that is *called*
from a plain torch hook on the HF module that computes its activation. That torch hook (the
"adapter") is attached only while the hook point has user hooks, so a model with no hooks runs
exactly the HF code, bit for bit, at full speed.

Each hook point also knows where the run is (``hook.step``, ``hook.block``, ``hook.stack``) through
a :class:`RunContext` that the sampler updates before every forward pass.

Activation layouts (TransformerLens conventions; ``pos`` is the canvas for the decoder and the
newly encoded tokens for the encoder, ``kv`` the attended keys: cached prefix + ``pos``):

    hook_embed, resid_*, attn_out, mlp_out, moe_out, ffn_out   [batch, pos, d_model]
    attn.hook_q, attn.hook_z                                 [batch, pos, n_heads, d_head]
    attn.hook_k, attn.hook_v                                 [batch, pos, n_kv_heads, d_head]
    attn.hook_pattern                                        [batch, n_heads, pos, kv]
    moe.hook_router_probs                                    [batch, pos, n_experts]
    moe.hook_topk_idx, moe.hook_topk_weights                 [batch, pos, top_k]
    hook_logits                                              [batch, pos, d_vocab]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module
from transformer_lens.hook_points import HookPoint
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.diffusion_gemma.modeling_diffusion_gemma import eager_attention_forward, repeat_kv

# Name of the attention implementation that exposes attention patterns to hooks.
HOOKED_EAGER = "diffinterp_eager"
_PATTERN_ATTR = "_diffinterp_pattern_hook"


class ConcurrentUseError(RuntimeError):
    """A model used from two threads at once (their hooks and run context would mix)."""


class ReentrantRunError(RuntimeError):
    """The model called from inside one of its own hooks while a run is in progress."""


@dataclass
class RunContext:
    """Where a run is: set by the sampler before each forward pass, read by hook points.

    ``step`` is None for encoder passes (they run once per block, not per denoising step).
    ``running``: a run (generate, a step re-run) is in progress; ``firing``: the hook point whose
    user hooks are running now; ``suppressed``: user hooks are skipped (internal replays of recorded
    steps, which must not be cached or edited). ``owner`` / ``claims``: the thread using the model
    (hooks attached, or a run in progress) and how many nested claims it holds.
    """

    stack: str | None = None
    block: int | None = None
    step: int | None = None
    running: str | None = None
    firing: str | None = None
    suppressed: bool = False
    owner: int | None = None
    claims: int = 0
    vouched: int | None = None  # id() of a replacement whose hook vouched it finite (hooks(check_finite=False))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    pending: list = field(default_factory=list, repr=False, compare=False)

    def defer_finite_check(self, name: str, tensor: torch.Tensor) -> None:
        """Queue a check that a hook's replacement is finite, as a device flag (no host sync inside
        the hook); :meth:`raise_if_nonfinite` reads the flags once per forward pass."""
        self.pending.append((name, self.step, self.block, torch.isfinite(tensor).all()))
        if len(self.pending) > 4096:  # a caller that never reads them: read them now
            self.raise_if_nonfinite()

    def raise_if_nonfinite(self) -> None:
        """Raise naming the first hook whose replacement held NaN or inf since the last call."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        flags = torch.stack([flag.to("cpu") for *_, flag in pending])
        if bool(flags.all()):
            return
        name, step, block, _ = pending[int((~flags).nonzero()[0])]
        where = f" at step {step}, block {block}" if step is not None else f" (block {block})"
        raise ValueError(
            f"hook on '{name}'{where} returned non-finite values (NaN or inf): the sampler cannot draw from them; "
            "check the replacement the hook computes"
        )

    @contextmanager
    def claim(self) -> Iterator[None]:
        """Hold the model for the current thread (nested claims by the same thread are fine); a claim
        from another thread raises :class:`ConcurrentUseError` at once instead of mixing runs."""
        me = threading.get_ident()
        with self.lock:
            if self.owner not in (None, me):
                raise ConcurrentUseError(
                    "this HookedDiffusionGemma is in use by another thread (a run or attached hooks): its hooks "
                    "and run context would mix the two runs. Give each thread its own model (copy.deepcopy(hm)) "
                    "or run them one after another."
                )
            self.owner, self.claims = me, self.claims + 1
        try:
            yield
        finally:
            with self.lock:
                self.claims -= 1
                if self.claims == 0:
                    self.owner = None

    @contextmanager
    def run(self, what: str) -> Iterator[None]:
        """Mark a run in progress (``what``: its name); a run started while one is in progress raises
        :class:`ReentrantRunError` naming the hook that started it. The context is restored after."""
        if self.running is not None:
            inside = f" from a hook on '{self.firing}'" if self.firing else ""
            raise ReentrantRunError(
                f"{what} was called{inside} while a {self.running} is in progress: the inner run would replace "
                "the outer run's step context and write into its caches. Compute what the hook needs before the "
                "run (e.g. a trajectory's step_inputs) or after it."
            )
        saved = (self.stack, self.block, self.step)
        self.running = what
        try:
            yield
            self.raise_if_nonfinite()  # flags the run left unread are its own, not the next run's
        finally:
            self.pending = []  # after an error too: an aborted run's flags must not blame the next one
            self.running = None
            self.stack, self.block, self.step = saved

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Skip user hooks for the body (internal forward passes that replay recorded steps)."""
        saved, self.suppressed = self.suppressed, True
        try:
            yield
        finally:
            self.suppressed = saved


class StepHookPoint(HookPoint):
    """A TransformerLens ``HookPoint`` that knows its denoising step and attaches lazily.

    ``attach(hook_point)`` installs the torch hooks on the HF module(s) and returns their handles;
    it runs when the first user hook (or tap) is added and is undone when the last one is removed.

    A *tap* (:meth:`add_tap`) is a read-only observer, ``tap(activation, hook_point)``: it runs
    after the user hooks, on the activation the model goes on with, and cannot replace it. It is
    what a cache needs, called straight from the adapter: no TransformerLens wrapper, no
    replacement check, one Python call per activation.
    """

    def __init__(
        self,
        context: RunContext,
        attach: Callable[[StepHookPoint], list[Any]],
        *,
        pos_dim: int = 1,
        on_attach_change: Callable[[StepHookPoint, bool], None] | None = None,
    ):
        super().__init__()
        self._context = context
        self._attach = attach
        self._handles: list[Any] | None = None
        self._on_attach_change = on_attach_change
        self._taps: list[Callable[[torch.Tensor, StepHookPoint], None]] = []
        self.pos_dim = pos_dim

    @property
    def step(self) -> int | None:
        return self._context.step

    @property
    def block(self) -> int | None:
        return self._context.block

    @property
    def stack(self) -> str | None:
        return self._context.stack

    @property
    def is_attached(self) -> bool:
        return self._handles is not None

    def add_hook(self, hook, dir="fwd", is_permanent=False, level=None, prepend=False, alias_names=None):
        handle = super().add_hook(
            hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend, alias_names=alias_names
        )
        self._sync_adapter()
        return handle

    def remove_hooks(self, dir="fwd", including_permanent=False, level=None) -> None:
        super().remove_hooks(dir, including_permanent=including_permanent, level=level)
        self._sync_adapter()

    @property
    def taps(self) -> tuple[Callable[[torch.Tensor, StepHookPoint], None], ...]:
        return tuple(self._taps)

    def add_tap(self, tap: Callable[[torch.Tensor, StepHookPoint], None]) -> Callable[[], None]:
        """Observe every activation here with ``tap(activation, hook_point)`` (its return value is
        ignored); returns a function that removes the tap. :meth:`HookedDiffusionGemma.taps` is
        the context manager that adds and removes them."""
        if not callable(tap):
            raise TypeError(f"a tap on '{self.name}' must be callable as tap(activation, hook_point), got {tap!r}")
        self._taps.append(tap)
        try:
            self._sync_adapter()
        except BaseException:  # attaching failed: leave no tap behind
            self._taps.remove(tap)
            raise

        def remove() -> None:
            for index, held in enumerate(self._taps):
                if held is tap:
                    del self._taps[index]
                    break
            self._sync_adapter()

        return remove

    def _sync_adapter(self) -> None:
        wanted = bool(self.fwd_hooks or self.bwd_hooks or self._taps)
        if wanted and self._handles is None:
            if self._on_attach_change is not None:
                self._on_attach_change(self, True)
            self._handles = self._attach(self)
        elif not wanted and self._handles is not None:
            for handle in self._handles:
                handle.remove()
            self._handles = None
            if self._on_attach_change is not None:
                self._on_attach_change(self, False)


def check_replacement(hook_point: HookPoint, original: torch.Tensor, new: Any) -> torch.Tensor:
    """Validate a hook's replacement: a tensor of the same shape (and a castable dtype)."""
    if not isinstance(new, torch.Tensor):
        raise TypeError(
            f"hook on '{hook_point.name}' returned {type(new).__name__}; return a tensor of shape "
            f"{tuple(original.shape)} to replace the activation, or None to leave it unchanged"
        )
    context = getattr(hook_point, "_context", None)
    vouched = context is not None and context.vouched is not None and context.vouched == id(new)
    if new.shape != original.shape:
        raise ValueError(
            f"hook on '{hook_point.name}' returned shape {tuple(new.shape)}; expected {tuple(original.shape)} "
            f"(the activation's shape)"
        )
    if new.dtype != original.dtype:
        if original.dtype.is_floating_point != new.dtype.is_floating_point:
            raise TypeError(f"hook on '{hook_point.name}' returned dtype {new.dtype}; expected {original.dtype}")
        new = new.to(original.dtype)
    if new.device != original.device:
        new = new.to(original.device)
    if new.is_floating_point() and not vouched:
        if context is not None and context.running is not None:
            context.defer_finite_check(hook_point.name, new)
        elif not bool(torch.isfinite(new).all()):
            raise ValueError(f"hook on '{hook_point.name}' returned non-finite values (NaN or inf)")
    return new


def _fire(hook_point: HookPoint, activation: torch.Tensor) -> torch.Tensor | None:
    """Run the hook point's user hooks, then its taps; the validated replacement, or None if unchanged.

    ``hook_point(activation)`` would run the identity module's forward hooks (TransformerLens's
    wrappers of the user hooks), each given the previous one's result. When those are all it has
    (no backward, pre- or keyword hooks on it, no global module hooks), they are called here
    directly: what ``nn.Module.__call__`` does for them, without a second pass through the hook
    machinery on every call. A hook point with only taps (a caching run) calls them and returns:
    one call per activation, as a hand-written torch hook makes."""
    state = hook_point.__dict__
    context = state.get("_context")
    if context is not None:
        if context.suppressed:
            return None
        outer, context.firing = context.firing, hook_point.name  # named in a re-entrant run's error
    try:
        taps = state.get("_taps")
        if taps and not hook_point._forward_hooks and not hook_point._backward_hooks:
            for tap in tuple(taps):  # a copy: a tap may remove itself
                tap(activation, hook_point)
            return None
        if (
            hook_point._backward_hooks
            or hook_point._backward_pre_hooks
            or hook_point._forward_pre_hooks
            or hook_point._forward_hooks_with_kwargs
            or torch_module._has_any_global_hook()
        ):
            result = hook_point(activation)
        else:
            args, result = (activation,), activation
            for hook in tuple(hook_point._forward_hooks.values()):
                replaced = hook(hook_point, args, result)
                if replaced is not None:
                    result = replaced
        new = None if result is activation else check_replacement(hook_point, activation, result)
        if taps:
            final = activation if new is None else new
            for tap in tuple(taps):
                tap(final, hook_point)
        return new
    finally:
        if context is not None:
            context.firing = outer
            context.vouched = None


# ---------------------------------------------------------------------------------------------
# Adapters: each returns ``attach(hook_point) -> [handles]``.


def output_adapter(module: nn.Module, view: Callable | None = None, unview: Callable | None = None):
    """Hook a module's output tensor (optionally reshaped by ``view`` for the hook)."""

    def attach(hook_point: HookPoint) -> list[Any]:
        def forward_hook(_module, _args, output):
            activation = view(output) if view is not None else output
            new = _fire(hook_point, activation)
            if new is None:
                return None
            return unview(new, output) if unview is not None else new

        return [module.register_forward_hook(forward_hook)]

    return attach


def input_adapter(module: nn.Module, index: int, kwarg: str, *, in_place: bool = False, view=None, unview=None):
    """Hook one input of a module (positional ``index`` or keyword ``kwarg``).

    ``in_place=True`` writes a replacement into the input tensor itself: needed where the HF layer
    keeps the same tensor in a local variable for later use (the residual stream at ``resid_mid``),
    so a replacement must reach every reader of it, not only this module.
    """

    def attach(hook_point: HookPoint) -> list[Any]:
        def pre_hook(_module, args, kwargs):
            original = kwargs[kwarg] if kwarg in kwargs else args[index]
            activation = view(original) if view is not None else original
            new = _fire(hook_point, activation)
            if new is None:
                return None
            new = unview(new, original) if unview is not None else new
            if in_place:
                original.copy_(new)
                return None
            if kwarg in kwargs:
                return args, {**kwargs, kwarg: new}
            return (*args[:index], new, *args[index + 1 :]), kwargs

        return [module.register_forward_pre_hook(pre_hook, with_kwargs=True)]

    return attach


def heads_view(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[batch, pos, n_heads * d_head] -> [batch, pos, n_heads, d_head]."""
    return tensor.view(*tensor.shape[:-1], n_heads, tensor.shape[-1] // n_heads)


class LayerShape:
    """The ``[batch, pos]`` of a layer's latest input, recorded by one forward pre-hook that the
    router hook points of the layer share: attached with the first of them, removed with the last
    (three recorders on one layer would triple a with-kwargs hook call per layer and step)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.shape: torch.Size | None = None
        self._handle: Any = None
        self._users = 0

    def _record(self, _module, args, kwargs) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.shape = hidden.shape

    def acquire(self) -> _Release:
        if self._users == 0:
            self._handle = self.layer.register_forward_pre_hook(self._record, with_kwargs=True)
        self._users += 1
        return _Release(self)

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._handle.remove()
            self._handle, self.shape = None, None


class _Release:
    """A removable handle that releases one user of a :class:`LayerShape` (once)."""

    def __init__(self, owner: LayerShape):
        self.owner: LayerShape | None = owner

    def remove(self) -> None:
        if self.owner is not None:
            self.owner, owner = None, self.owner
            owner.release()


def router_adapter(layer_shape: LayerShape, router: nn.Module, output_index: int):
    """Hook one of the router's outputs (probs, top-k weights, top-k indices), as [batch, pos, ·].

    The router sees flattened tokens; the layer's input shape (``layer_shape``, shared by the
    layer's router hook points) restores the batch and position axes.
    """

    def attach(hook_point: HookPoint) -> list[Any]:
        def forward_hook(_module, _args, output):
            batch, pos = layer_shape.shape[:2]
            flat = output[output_index]
            new = _fire(hook_point, flat.view(batch, pos, flat.shape[-1]))
            if new is None:
                return None
            if output_index == 2:  # expert ids index the experts' weights: an id past them is no expert
                experts = output[0].shape[-1]  # the router's probabilities cover every expert
                low, high = int(new.min()), int(new.max())
                if low < 0 or high >= experts:
                    raise ValueError(
                        f"hook on '{hook_point.name}' wrote expert id {low if low < 0 else high}; this layer has "
                        f"experts 0..{experts - 1}"
                    )
            parts = list(output)
            parts[output_index] = new.reshape(flat.shape)
            return tuple(parts)

        release = layer_shape.acquire()  # before the router's hook: the shape is set when it fires
        try:
            return [release, router.register_forward_hook(forward_hook)]
        except BaseException:
            release.remove()
            raise

    return attach


class _AttributeHandle:
    """A removable handle for a hook stored as a module attribute."""

    def __init__(self, module: nn.Module, name: str):
        self.module, self.name = module, name

    def remove(self) -> None:
        if hasattr(self.module, self.name):
            delattr(self.module, self.name)


def pattern_adapter(attention: nn.Module):
    """Hook the attention pattern; it is computed only by the hooked eager implementation."""

    def attach(hook_point: HookPoint) -> list[Any]:
        object.__setattr__(attention, _PATTERN_ATTR, lambda pattern: _fire(hook_point, pattern))
        return [_AttributeHandle(attention, _PATTERN_ATTR)]

    return attach


def logits_adapter(model: nn.Module):
    """Hook the soft-capped logits of the top-level model's output."""

    def attach(hook_point: HookPoint) -> list[Any]:
        def forward_hook(_module, _args, output):
            new = _fire(hook_point, output.logits)
            if new is None:
                return None
            output.logits = new
            return output

        return [model.register_forward_hook(forward_hook)]

    return attach


def hooked_eager_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' eager attention, with the pattern exposed to a hook point.

    With no pattern hook it is ``eager_attention_forward`` itself; a replaced pattern is applied
    to the same (repeated) values the eager code uses.
    """
    output, weights = eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    pattern_hook = getattr(module, _PATTERN_ATTR, None)
    if pattern_hook is None:
        return output, weights
    new = pattern_hook(weights)
    if new is None:
        return output, weights
    values = repeat_kv(value, module.num_key_value_groups)
    output = torch.matmul(new.to(values.dtype), values).transpose(1, 2).contiguous()
    return output, new


def hooked_eager_mask(*args, dtype: torch.dtype = torch.float32, **kwargs):
    """transformers' eager (additive) mask, made in a float dtype.

    The sampler builds the decoder mask from the integer canvas (as transformers' generate does),
    which plain eager attention cannot turn into an additive mask for padded batches.
    """
    if not dtype.is_floating_point:
        dtype = torch.float32
    return eager_mask(*args, dtype=dtype, **kwargs)


# Registering a named implementation is transformers' extension point for attention kernels.
AttentionInterface.register(HOOKED_EAGER, hooked_eager_attention)
AttentionMaskInterface.register(HOOKED_EAGER, hooked_eager_mask)
