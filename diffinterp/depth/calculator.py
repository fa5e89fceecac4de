"""Opaque serial depth of a PyTorch computation.

The rules (``serial_depth`` library of Brown-Cohen & Lindner; our own PyTorch implementation):
inputs, parameters and constants have depth 0; data movement (views, slices, concatenation,
gathers, casts) adds 0; an element-wise op adds 1; a reduction over N elements adds
ceil(log2 N); a matmul adds 1 + ceil(log2 K) for contraction size K (K + 1 terms with a bias);
loops add per iteration (they are traced unrolled); a tensor's depth is the max over its inputs
plus the op's cost. *Opaque* depth resets at interpretable states: integer token ids made by
argmax or sampling (argmax, argmin, multinomial, the indices of topk/sort/max), and whatever the
caller marks with :meth:`DepthTracer.mark_interpretable`.

Why a ``TorchDispatchMode``: it sees every ATen op the *real* forward executes, through the
unmodified transformers code (Python control flow, cache objects, dicts of masks), on ``meta``
tensors, so the 26B model is traced with no memory. ``torch.export``/FX would need the model to be
traceable as a graph, which transformers' DiffusionGemma sampler and caches are not. Composite ops
(softmax, GELU, SiLU, layer norm, variance…) are decomposed with torch's decomposition table, so
depth counts primitive steps as a JAX trace would.

Depth is tracked per tensor (not per element): a tensor's depth is the longest chain into any of
its elements. Attention mixes all positions within one layer, so for transformers this loses
nothing at the scale of a layer.

    report = serial_depth(model, input_ids)               # fn: a module or any callable
    report.depth, report.critical_path, report.by_module

    with DepthTracer(root=model) as tracer:               # several calls sharing tensors (KV caches)
        cache = model(prompt, use_cache=True).past_key_values
        out = model(token, past_key_values=cache)
    tracer.report(out.logits)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._decomp import decomposition_table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_A = torch.ops.aten

# Data movement: reshaping, selecting, gathering, placing and casting cost nothing.
MOVEMENT = frozenset(
    """view _unsafe_view reshape expand expand_as permute transpose t slice select squeeze unsqueeze cat stack
    split split_with_sizes chunk unbind clone contiguous _to_copy to copy alias detach lift_fresh index_select
    gather index embedding repeat flatten unflatten narrow roll flip as_strided view_as _reshape_alias diagonal
    constant_pad_nd scatter index_put index_copy masked_scatter select_scatter slice_scatter resolve_conj
    resolve_neg unfold movedim tril triu _unsafe_index unsqueeze_copy squeeze_copy view_copy permute_copy
    transpose_copy expand_copy t_copy slice_copy select_copy split_copy alias_copy repeat_interleave
    set_ _has_compatible_shallow_copy_type""".split()
)
# Constants and fresh random numbers: depth 0.
CREATION = frozenset(
    """zeros ones full empty arange zeros_like ones_like full_like empty_like rand randn randint randperm
    scalar_tensor new_zeros new_ones new_full new_empty empty_strided linspace eye rand_like randn_like
    randint_like bernoulli normal uniform fill zero _local_scalar_dense""".split()
)
# Ops whose integer outputs are token choices: interpretable, depth 0.
RESETS = frozenset({"argmax", "argmin", "multinomial"})
REDUCTIONS = frozenset(
    "sum mean amax amin prod logsumexp var std any all count_nonzero norm linalg_vector_norm nansum".split()
)
SCANS = frozenset({"cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"})
SELECTIONS = frozenset({"topk", "sort", "max", "min", "kthvalue", "median", "mode"})  # values + indices
MATMULS = frozenset({"mm", "bmm", "addmm", "baddbmm", "addbmm", "dot", "mv", "addmv", "vdot"})
# Composite ops decomposed into primitives before costing.
DECOMPOSED = frozenset(
    {
        _A._softmax.default,
        _A._log_softmax.default,
        _A._safe_softmax.default,
        _A.gelu.default,
        _A.silu.default,
        _A.native_layer_norm.default,
        _A.var.correction,
        _A.std.correction,
        _A.logsumexp.default,
        _A.softplus.default,
        _A.linalg_vector_norm.default,
        _A.linear.default,
        _A.matmul.default,
        _A.one_hot.default,
    }
)


def _log2_ceil(n: int) -> int:
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


@dataclass
class Node:
    """How a tensor got its depth: the op, where it ran, its cost, and the deepest input's node."""

    op: str
    module: str
    depth: int
    cost: int
    parent: Node | None = None


@dataclass
class PathStep:
    """One op on a critical path."""

    op: str
    module: str
    cost: int
    depth: int


@dataclass
class DepthReport:
    """Depth of a computation's outputs and the path that sets it.

    ``depth`` is the maximum over ``output_depths``; ``critical_path`` lists the costing ops from the
    last reset (or input) to the deepest output; ``by_module`` sums their costs per module.
    """

    depth: int
    output_depths: list[int]
    critical_path: list[PathStep]
    by_module: dict[str, int]
    op_counts: dict[str, int] = field(default_factory=dict)
    unknown_ops: dict[str, int] = field(default_factory=dict)

    def by_prefix(self, levels: int) -> dict[str, int]:
        """``by_module`` grouped by the first ``levels`` components of the module names."""
        grouped: Counter[str] = Counter()
        for name, cost in self.by_module.items():
            grouped[".".join(name.split(".")[:levels])] += cost
        return dict(grouped)

    def summary(self, top: int = 12) -> str:
        lines = [f"depth {self.depth} over {len(self.output_depths)} output tensor(s)"]
        heaviest = sorted(self.by_module.items(), key=lambda item: -item[1])[:top]
        lines += [f"  {cost:6d}  {name}" for name, cost in heaviest]
        if self.unknown_ops:
            lines.append(f"  ops costed as element-wise by default: {dict(self.unknown_ops)}")
        return "\n".join(lines)


class DepthTracer(TorchDispatchMode):
    """Propagates serial depth through every ATen op run inside the ``with`` block.

    ``root`` names modules for ``by_module`` (ops are attributed to the innermost module running);
    ``reset_ops`` are the ops whose outputs count as interpretable token choices. ``memoise``:
    replay the meta kernel's output for a call that repeats an earlier one's op and argument
    shapes (functional ops only; the results are the same, about 4x faster on the real config).
    """

    def __init__(self, root: nn.Module | None = None, reset_ops: Iterable[str] = RESETS, *, memoise: bool = True):
        super().__init__()
        self.memoise = memoise
        self._nodes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._names = {id(m): name or type(m).__name__ for name, m in root.named_modules()} if root else {}
        self._stack: list[str] = []
        self._handles: list[Any] = []
        self._entries = 0
        self.reset_ops = frozenset(reset_ops)
        self.op_counts: Counter[str] = Counter()
        self.unknown_ops: Counter[str] = Counter()
        # (op, argument shapes and values) -> what its meta kernel returned and the per-output
        # costs: a traced step repeats the same ops on the same shapes, layer after layer and
        # step after step, and the meta kernels (Python reference implementations) dominate.
        self._meta_outputs: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ context
    def __enter__(self):
        # Re-entered (nested) to run decompositions through this mode: only the outermost entry
        # owns the module hooks and the module stack.
        if self._entries == 0:
            from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

            self._stack.clear()
            self._handles = [
                register_module_forward_pre_hook(self._enter_module),
                register_module_forward_hook(self._exit_module, always_call=True),
            ]
        self._entries += 1
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._entries -= 1
            if self._entries == 0:
                for handle in self._handles:
                    handle.remove()
                self._handles = []

    def _enter_module(self, module, _args):
        self._stack.append(self._names.get(id(module), type(module).__name__))

    def _exit_module(self, _module, _args, _output):
        if self._stack:
            self._stack.pop()

    # ------------------------------------------------------------------ depths
    def depth_of(self, tensor: torch.Tensor) -> int:
        node = self._nodes.get(tensor)
        return node.depth if node is not None else 0

    def set_depth(self, tensor: torch.Tensor, depth: int, label: str = "input") -> torch.Tensor:
        """Give an input tensor a starting depth (e.g. a signal carried over from a previous step)."""
        self._nodes[tensor] = Node(label, "", depth, depth)
        return tensor

    def mark_interpretable(self, tensor: torch.Tensor, label: str = "interpretable") -> torch.Tensor:
        """Reset ``tensor``'s depth to 0: the caller declares it an interpretable state."""
        return self.set_depth(tensor, 0, label)

    def node_of(self, tensor: torch.Tensor) -> Node | None:
        return self._nodes.get(tensor)

    def report(self, outputs: Any) -> DepthReport:
        """Depths of the tensors in ``outputs`` (any pytree) and the critical path of the deepest."""
        tensors = [t for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor)]
        if not tensors:
            raise ValueError("serial depth needs at least one output tensor")
        depths = [self.depth_of(t) for t in tensors]
        deepest = self._nodes.get(tensors[depths.index(max(depths))])
        path: list[PathStep] = []
        while deepest is not None:
            if deepest.cost > 0:  # data movement on the path adds nothing worth listing
                path.append(PathStep(deepest.op, deepest.module, deepest.cost, deepest.depth))
            deepest = deepest.parent
        path.reverse()
        by_module: Counter[str] = Counter()
        for step in path:
            by_module[step.module or "(outside modules)"] += step.cost
        return DepthReport(
            depth=max(depths),
            output_depths=depths,
            critical_path=path,
            by_module=dict(by_module),
            op_counts=dict(self.op_counts),
            unknown_ops=dict(self.unknown_ops),
        )

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DECOMPOSED and func in decomposition_table:
            with self:
                return decomposition_table[func](*args, **kwargs)
        name = func.overloadpacket.__name__
        in_place = name.endswith("_") and not name.startswith("_")
        base_name = name.rstrip("_") if in_place else name
        flat, structure = tree_flatten((args, kwargs))
        use = self.memoise and not in_place and _returns_fresh_tensors(func)
        key = _memo_key(func, flat, structure) if use else None
        memo = self._meta_outputs.get(key) if key is not None else None
        if memo is not None:
            spec, costs, unknown = memo
            out = _rebuild(spec)
            if unknown:
                self.unknown_ops[base_name] += unknown  # as _cost counts them on every call
        else:
            out = func(*args, **kwargs)
            costs = None
        self.op_counts[base_name] += 1
        inputs = [t for t in flat if isinstance(t, torch.Tensor)]
        parent = None
        for tensor in inputs:
            node = self._nodes.get(tensor)
            if node is not None and (parent is None or node.depth > parent.depth):
                parent = node
        base = parent.depth if parent is not None else 0
        module = self._stack[-1] if self._stack else ""
        targets = [args[0]] if in_place and args and isinstance(args[0], torch.Tensor) else None
        outputs = targets or [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if costs is None:
            unknown = self.unknown_ops[base_name]
            costs = [self._cost(base_name, func, args, kwargs, index) for index in range(len(outputs))]
            if key is not None and all(t.device.type == "meta" for t in outputs):
                self._meta_outputs[key] = (_spec(out), costs, self.unknown_ops[base_name] - unknown)
        for tensor, (cost, resets) in zip(outputs, costs, strict=True):
            if resets or base_name in CREATION:
                self._nodes[tensor] = Node(base_name, module, 0, 0)
            else:
                self._nodes[tensor] = Node(base_name, module, base + cost, cost, parent)
        return out

    def _cost(self, name: str, func, args, kwargs, output_index: int) -> tuple[int, bool]:
        """(cost, resets) of output ``output_index`` of op ``name``."""
        if name in self.reset_ops:
            return 0, True
        if name in MOVEMENT or name in CREATION:
            return 0, False
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in MATMULS:
            return self._matmul_cost(name, args), False
        if name in REDUCTIONS and first is not None:
            return _log2_ceil(_reduced_count(first, args, kwargs)), False
        if name in SCANS and first is not None:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
            return _log2_ceil(first.shape[dim] if first.dim() else 1), False
        if name in SELECTIONS and first is not None:
            is_indices = output_index == 1
            if name in ("max", "min") and _reduces_everything(func):
                is_indices = False
            if is_indices:  # which element was chosen: a discrete choice, like argmax
                return 0, True
            return _log2_ceil(_selection_count(name, func, first, args, kwargs)), False
        if name not in _ELEMENTWISE_KNOWN:
            self.unknown_ops[name] += 1
        return 1, False

    @staticmethod
    def _matmul_cost(name: str, args) -> int:
        if name in ("addmm", "baddbmm", "addbmm", "addmv"):
            contraction = args[1].shape[-1] + 1  # the bias is one more term of the sum
        else:
            contraction = args[0].shape[-1]
        return 1 + _log2_ceil(contraction)


def _reduces_everything(func) -> bool:
    return func._overloadname in ("default", "")


def _reduced_count(tensor: torch.Tensor, args, kwargs) -> int:
    dims = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return tensor.numel()
    if isinstance(dims, int):
        dims = [dims]
    count = 1
    for dim in dims:
        count *= tensor.shape[dim] if tensor.dim() else 1
    return count


def _selection_count(name: str, func, tensor: torch.Tensor, args, kwargs) -> int:
    if name in ("max", "min") and _reduces_everything(func):
        return tensor.numel()
    if name == "topk":
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
    else:
        dim = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("dim", -1)
    return tensor.shape[dim] if tensor.dim() else 1


# Element-wise ops we know by name (anything else is costed 1 as well, but reported).
_ELEMENTWISE_KNOWN = frozenset(
    """add sub mul div neg exp log tanh sigmoid relu gelu pow rsqrt sqrt abs sign clamp clamp_min clamp_max
    maximum minimum where masked_fill eq ne lt le gt ge logical_and logical_or logical_not logical_xor
    bitwise_and bitwise_or bitwise_not bitwise_xor erf erfc expm1 log1p log2 sin cos reciprocal floor ceil
    round trunc remainder fmod floor_divide rsub exp2 square isnan isinf isfinite lerp addcmul addcdiv
    nan_to_num hardtanh threshold silu leaky_relu elu softplus mish hypot atan2 true_divide copysign
    heaviside xlogy sgn frac signbit logaddexp""".split()
)


def _returns_fresh_tensors(func) -> bool:
    """An op that mutates nothing and returns new tensors (no views or aliases of its inputs):
    its output is determined by the inputs' metadata, so a memo may stand in for the kernel."""
    schema = func._schema
    return not schema.is_mutable and all(ret.alias_info is None for ret in schema.returns)


def _memo_key(func, flat: list, structure) -> tuple | None:
    """A hashable description of a call: the arguments' structure, tensors by shape, stride and
    dtype, scalars by type and value (1, 1.0 and True compare equal in Python); or None."""
    parts: list = [func, structure]
    for value in flat:
        if isinstance(value, torch.Tensor):
            if value.device.type != "meta":
                return None  # real values can decide the output (e.g. a scalar tensor's shape use)
            parts.append(("T", tuple(value.shape), value.stride(), value.dtype, value.storage_offset()))
        elif value is None or isinstance(
            value, (bool, int, float, str, torch.dtype, torch.device, torch.memory_format, torch.layout)
        ):
            parts.append((type(value), value))
        else:
            return None
    return tuple(parts)


def _spec(out):
    """The structure of an op's output, each tensor as (shape, stride, dtype)."""
    if isinstance(out, torch.Tensor):
        return ("T", tuple(out.shape), out.stride(), out.dtype)
    if isinstance(out, (tuple, list)):
        return (type(out), tuple(_spec(item) for item in out))
    return ("V", out)


def _rebuild(spec):
    kind = spec[0]
    if kind == "T":
        return torch.empty_strided(spec[1], spec[2], dtype=spec[3], device="meta")
    if kind == "V":
        return spec[1]
    return kind(tuple(_rebuild(item) for item in spec[1]))  # tuple, list or a torch.return_types


def serial_depth(
    fn: Callable[..., Any] | nn.Module,
    *args: Any,
    root: nn.Module | None = None,
    input_depths: dict[int, int] | None = None,
    reset_ops: Iterable[str] = RESETS,
    **kwargs: Any,
) -> DepthReport:
    """Trace ``fn(*args, **kwargs)`` and report the opaque serial depth of its outputs.

    ``root`` names modules in ``by_module`` (default: ``fn`` when it is a module);
    ``input_depths`` maps positional-argument indices to starting depths (default 0).
    """
    if root is None and isinstance(fn, nn.Module):
        root = fn
    with DepthTracer(root=root, reset_ops=reset_ops) as tracer:
        for index, depth in (input_depths or {}).items():
            if not 0 <= index < len(args) or not isinstance(args[index], torch.Tensor):
                raise ValueError(f"input_depths names argument {index}, which is not a tensor argument of fn")
            tracer.set_depth(args[index], depth)
        outputs = fn(*args, **kwargs)
        return tracer.report(outputs)
