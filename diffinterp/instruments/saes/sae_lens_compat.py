"""Importing SAELens beside TransformerLens 4.

SAELens 6.51 imports, at the top of its package, modules that TransformerLens 4 removed
(``transformer_lens.HookedTransformer``, ``transformer_lens.utils``, ``transformer_lens.components``),
so ``import sae_lens`` fails with TransformerLens 4.3, the version diffinterp's hook points are
built on (SAELens issue #738, open; its later releases pin ``transformer-lens<4`` instead). The
parts diffinterp uses, the SAE classes, their training step and the on-disk format, do not touch
those modules: they need only ``HookedRootModule`` and ``HookPoint``, which TransformerLens 4 still
has. :func:`import_sae_lens` registers, for each missing module, a stand-in holding the real
``HookedRootModule`` and placeholders for the rest (each raises, naming what is unavailable, when
used), then imports SAELens. Nothing is registered where the real module exists, so this becomes a
no-op once SAELens supports TransformerLens 4.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_WHY = (
    "SAELens's TransformerLens-model API ({name}) needs transformer-lens < 4, and diffinterp uses "
    "transformer-lens 4.3; diffinterp uses SAELens's SAEs and trainer only (see "
    "diffinterp.instruments.saes.sae_lens_compat)"
)


def _placeholder_class(name: str) -> type:
    def unavailable(*_args: Any, **_kwargs: Any):
        raise RuntimeError(_WHY.format(name=name))

    return type(name, (), {"__init__": unavailable, "from_pretrained": classmethod(unavailable)})


def _placeholder_function(name: str):
    def unavailable(*_args: Any, **_kwargs: Any):
        raise RuntimeError(_WHY.format(name=name))

    unavailable.__name__ = name
    return unavailable


def _stand_ins() -> dict[str, dict[str, Any]]:
    from transformer_lens import HookedRootModule

    return {
        "transformer_lens.HookedTransformer": {
            "HookedRootModule": HookedRootModule,
            "HookedTransformer": _placeholder_class("HookedTransformer"),
            "Loss": Any,
            "Output": Any,
        },
        "transformer_lens.utils": {
            "USE_DEFAULT_VALUE": None,
            "get_tokens_with_bos_removed": _placeholder_function("get_tokens_with_bos_removed"),
            "lm_cross_entropy_loss": _placeholder_function("lm_cross_entropy_loss"),
            "tokenize_and_concatenate": _placeholder_function("tokenize_and_concatenate"),
            "get_act_name": _placeholder_function("get_act_name"),
        },
        "transformer_lens.components": {},
        "transformer_lens.components.mlps": {},
        "transformer_lens.components.mlps.can_be_used_as_mlp": {"CanBeUsedAsMLP": _placeholder_class("CanBeUsedAsMLP")},
    }


def _exists(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def import_sae_lens() -> types.ModuleType:
    """``sae_lens``, imported (with the stand-ins above where TransformerLens lacks a module)."""
    if "sae_lens" in sys.modules:
        return sys.modules["sae_lens"]
    import transformer_lens

    for name, attributes in _stand_ins().items():
        if _exists(name):
            continue
        module = types.ModuleType(name, f"diffinterp's stand-in for the removed {name} (see {__name__})")
        module.__dict__.update(attributes)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent] if parent in sys.modules else transformer_lens, child, module)
    try:
        return importlib.import_module("sae_lens")
    except ImportError as error:
        raise ImportError(
            f"could not import SAELens ({error}); diffinterp's SAEs need sae-lens 6.51 (pip install 'sae-lens>=6.51,<6.52')"
        ) from error
