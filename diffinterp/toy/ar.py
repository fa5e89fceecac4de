"""The autoregressive twin of the bundled DiffusionGemma: ``Gemma4ForCausalLM``, our stand-in for
"Gemma 4", trained with the same text configuration, tokenizer and data (prompt, then the answer).

    import diffinterp as di
    ar = di.load_ar_baseline()           # ARBaseline(model=Gemma4ForCausalLM, tokenizer=...)
    model, tokenizer = ar                # it unpacks like a (model, tokenizer) pair
    ar.complete(["arith a=3 b=a+4 c=b*2 ? c"])   # ['b = 7 c = 1 4 = 1 4'] (greedy, up to <eos>)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

AR_MODEL_TYPE = "gemma4_text"
AR_ARCHITECTURE = "Gemma4ForCausalLM"


def bundled_ar_path() -> Path:
    """Folder of the AR twin shipped with the package."""
    return Path(str(resources.files("diffinterp").joinpath("assets", "ar")))


def bundled_diffusion_path() -> Path:
    """Folder of the toy DiffusionGemma shipped with the package."""
    return Path(str(resources.files("diffinterp").joinpath("assets", "diffusion")))


@dataclass
class ARBaseline:
    """The AR twin: the HF ``Gemma4ForCausalLM`` (eval mode) and its tokenizer."""

    model: Any
    tokenizer: Any
    path: Path | None = None

    def __iter__(self):
        return iter((self.model, self.tokenizer))

    def complete(self, prompts: list[str], **gen_kwargs: Any) -> list[str]:
        """Greedy completions of task prompts (text up to ``<eos>``, tokens joined by spaces)."""
        from diffinterp.toy.evaluate import predict

        preds, _ = predict(self.model, list(prompts), model_kind="ar", **gen_kwargs)
        return preds


def validate_ar_folder(path: Path) -> None:
    """Raise a clear error unless ``path`` is an HF ``Gemma4ForCausalLM`` folder with safetensors."""
    from diffinterp.model import validate_checkpoint_folder

    validate_checkpoint_folder(path, AR_MODEL_TYPE, AR_ARCHITECTURE, "load_ar_baseline")


def load_ar_baseline(path: str | Path | None = None, *, device: str | None = None) -> ARBaseline:
    """Load the AR twin (default: the bundled one) as an :class:`ARBaseline`.

    Raises ``FileNotFoundError``/``ValueError`` naming the problem for a missing, corrupted or
    other-architecture folder.
    """
    from transformers import AutoTokenizer, Gemma4ForCausalLM

    from diffinterp.model import check_loading_info

    folder = Path(path) if path is not None else bundled_ar_path()
    validate_ar_folder(folder)
    try:
        model, info = Gemma4ForCausalLM.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True)
    except Exception as err:  # safetensors raises its own error types on truncated files
        raise ValueError(f"could not load the AR checkpoint in {folder}: {err}") from err
    check_loading_info(info, folder, "AR checkpoint")
    if device is not None:
        model = model.to(device)
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return ARBaseline(model=model.eval(), tokenizer=tokenizer, path=folder)
