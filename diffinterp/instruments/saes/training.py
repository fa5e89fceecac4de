"""Training sparse autoencoders on denoising-time activations, with SAELens.

    config = SAETrainingConfig(ActivationSpec("decoder.blocks.2.hook_resid_post"), width=512, k=16)
    result = train_sae(hm, prompt_batches, config, out="out/sae")   # SAELens TopK (or standard) SAE
    sae = sae_lens.SAE.load_from_disk("out/sae")                     # SAELens reads the folder itself

The architecture, its losses, its optimiser and the training step are SAELens's
(``TopKTrainingSAE`` / ``StandardTrainingSAE`` driven through ``SAETrainer.step``); diffinterp feeds
it activations from :func:`~diffinterp.instruments.saes.activations.activation_stream` and records
the training curve. The folder is SAELens's inference format (``cfg.json`` and
``sae_weights.safetensors``) plus ``diffinterp_sae.json``: the model, the activation spec, the
curve and the held-out metrics. It appears whole when training ends, or not at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffinterp.instruments.saes.activations import ActivationSpec
from diffinterp.instruments.saes.sae_lens_compat import import_sae_lens
from diffinterp.records.files import atomic_folder

ARCHITECTURES = ("topk", "standard")
METADATA_FILE = "diffinterp_sae.json"
METADATA_KIND = "diffinterp.SAE"


@dataclass
class SAETrainingConfig:
    """What to train: the activations (``spec``), the SAE (``architecture``, ``width`` features,
    ``k`` active per input for Top-K, ``l1_coefficient`` for standard) and how (``training_samples``
    activations in batches of ``batch_size``, Adam at ``lr``, ``seed``)."""

    spec: ActivationSpec
    architecture: str = "topk"
    width: int = 512
    k: int = 16
    l1_coefficient: float = 5.0
    training_samples: int = 100_000
    batch_size: int = 256
    lr: float = 3e-4
    seed: int = 0
    log_every: int = 10

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}; got {self.architecture!r}")
        for name in ("width", "k", "training_samples", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.architecture == "topk" and self.k > self.width:
            raise ValueError(f"k={self.k} is more features than the SAE has (width={self.width})")
        if self.training_samples < self.batch_size:
            raise ValueError(f"training_samples={self.training_samples} is less than one batch ({self.batch_size})")

    @property
    def training_steps(self) -> int:
        return self.training_samples // self.batch_size


@dataclass
class SAETrainingResult:
    """A trained SAE (SAELens, eval mode) and its training curve (one entry per ``log_every`` steps:
    step, loss, mse, l0, explained_variance on that step's batch)."""

    sae: Any
    config: SAETrainingConfig
    curve: list[dict[str, float]] = field(default_factory=list)
    held_out: dict[str, float] | None = None


def build_sae(config: SAETrainingConfig, d_in: int, *, model_name: str = "diffinterp"):
    """A fresh SAELens training SAE for ``config`` on ``d_in``-dimensional activations."""
    sae_lens = import_sae_lens()
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(model_name=model_name, hook_name=config.spec.hook)
    if config.architecture == "topk":
        cfg = sae_lens.TopKTrainingSAEConfig(d_in=d_in, d_sae=config.width, k=config.k, metadata=metadata)
        return sae_lens.TopKTrainingSAE(cfg)
    cfg = sae_lens.StandardTrainingSAEConfig(
        d_in=d_in, d_sae=config.width, l1_coefficient=config.l1_coefficient, metadata=metadata
    )
    return sae_lens.StandardTrainingSAE(cfg)


def _fit(x: torch.Tensor, recon: torch.Tensor, features: torch.Tensor) -> dict[str, float]:
    """MSE, explained variance (1 - SSE / total variance about the mean, as SAELens reports it) and
    L0 of a reconstruction ``recon`` of ``x`` (``[n, d_in]``) from ``features`` (``[n, d_sae]``)."""
    sse = (recon - x).pow(2).sum(-1)
    total = float((x - x.mean(0)).pow(2).sum(-1).mean())
    return {
        "mse": float((recon - x).pow(2).mean()),
        "explained_variance": float(1 - sse.mean() / total) if total > 0 else math.nan,
        "l0": float((features != 0).float().sum(-1).mean()),
    }


@torch.no_grad()
def reconstruction_metrics(sae, activations: torch.Tensor) -> dict[str, float]:
    """MSE (mean over elements), explained variance and L0 (mean active features) of ``sae`` on
    ``activations`` ``[n, d_in]``."""
    if activations.dim() != 2 or len(activations) < 2:
        raise ValueError(f"need activations [n >= 2, d_in], got {list(activations.shape)}")
    x = activations.to(sae.W_enc.dtype)
    features = sae.encode(x)
    return {"n": len(x), **_fit(x, sae.decode(features), features)}


def train_sae(
    hm,
    stream,
    config: SAETrainingConfig,
    *,
    out: str | Path | None = None,
    held_out: torch.Tensor | None = None,
    progress: bool = True,
    model_name: str = "diffinterp",
) -> SAETrainingResult:
    """Train an SAE on ``stream`` (batches ``[batch_size, d_in]``, e.g. an ``activation_stream``).

    ``held_out`` (activations of other prompts) gets :func:`reconstruction_metrics` at the end;
    ``out`` saves the folder (see the module docstring)."""
    import_sae_lens()  # SAELens imports beside TransformerLens 4 (see sae_lens_compat)
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from tqdm.auto import tqdm

    stream = iter(stream)
    first = next(stream, None)
    if first is None:
        raise ValueError(f"the activation stream for {config.spec.describe()} gave no batch")
    d_in = first.shape[-1]
    with torch.random.fork_rng(devices=[]):  # the SAE's initialisation is seeded; the caller's RNG is untouched
        torch.manual_seed(config.seed)
        sae = build_sae(config, d_in, model_name=model_name)
    trainer_config = SAETrainerConfig(
        total_training_samples=config.training_steps * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.lr,
        lr_end=config.lr,  # a constant rate (SAETrainer wants the end rate stated)
        device="cpu",
        feature_sampling_window=max(10, config.training_steps // 4),
        dead_feature_window=max(10, config.training_steps // 4),
    )
    trainer = SAETrainer(trainer_config, sae, data_provider=stream)
    curve: list[dict[str, float]] = []
    batches = _prepend(first, stream)
    bar = tqdm(total=config.training_steps, desc=f"SAE {config.spec.hook}", disable=not progress, leave=False)
    try:
        for step in range(config.training_steps):
            batch = next(batches, None)
            if batch is None:
                raise ValueError(
                    f"the activation stream ran out after {step} of {config.training_steps} batches: "
                    "give more prompt batches or fewer training_samples"
                )
            trainer.maybe_reset_sparsity()
            output = trainer.step(batch)
            trainer.n_training_steps += 1
            if step % config.log_every == 0 or step == config.training_steps - 1:
                curve.append(_curve_point(step, output))
                bar.set_postfix(loss=f"{curve[-1]['loss']:.4g}", ev=f"{curve[-1]['explained_variance']:.3f}")
            bar.update(1)
    finally:
        bar.close()
    trainer.set_final_sae_metadata()
    sae = _inference_sae(sae)
    result = SAETrainingResult(
        sae, config, curve, reconstruction_metrics(sae, held_out) if held_out is not None else None
    )
    if out is not None:
        save_sae(result, out, model_name=model_name)
    return result


def _prepend(first, rest):
    yield first
    yield from rest


@torch.no_grad()
def _curve_point(step: int, output) -> dict[str, float]:
    return {"step": step, "loss": float(output.loss), **_fit(output.sae_in, output.sae_out, output.feature_acts)}


def _inference_sae(training_sae):
    """The trained SAE as SAELens's inference class (what ``SAE.load_from_disk`` returns)."""
    SAE = import_sae_lens().SAE

    cfg_dict = training_sae.cfg.get_inference_sae_cfg_dict()
    state = dict(training_sae.state_dict())
    training_sae.process_state_dict_for_saving_inference(state)
    sae_class = SAE.get_sae_class_for_architecture(cfg_dict["architecture"])
    config_class = SAE.get_sae_config_class_for_architecture(cfg_dict["architecture"])
    sae = sae_class(config_class.from_dict(cfg_dict))
    sae.load_state_dict(state)
    return sae.eval()


def save_sae(result: SAETrainingResult, out: str | Path, *, model_name: str = "diffinterp") -> Path:
    """Write ``result`` as a SAELens folder plus ``diffinterp_sae.json`` (atomically)."""
    with atomic_folder(out) as folder:
        result.sae.save_model(folder)
        metadata = {
            "kind": METADATA_KIND,
            "model": model_name,
            "spec": {**asdict(result.config.spec), "steps": result.config.spec.steps},
            "config": {k: v for k, v in asdict(result.config).items() if k != "spec"},
            "curve": result.curve,
            "held_out": result.held_out,
        }
        (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
    return Path(out)


def load_sae(folder: str | Path):
    """``(sae, metadata)``: the SAELens SAE in ``folder`` and diffinterp's record of how it was trained
    (``metadata["spec"]`` is an :class:`ActivationSpec`)."""
    SAE = import_sae_lens().SAE
    folder = Path(folder)
    meta_path = folder / METADATA_FILE
    if not (folder / "cfg.json").is_file():
        raise FileNotFoundError(f"{folder} holds no SAE (no cfg.json): give a folder `diffinterp sae train` wrote")
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if metadata and metadata.get("kind") != METADATA_KIND:
        raise ValueError(f"{meta_path} is not a diffinterp SAE record (kind {metadata.get('kind')!r})")
    if "spec" in metadata:
        metadata["spec"] = ActivationSpec(**metadata["spec"])
    return SAE.load_from_disk(folder).eval(), metadata


def sae_hook(sae, metadata: dict) -> str:
    """The hook an SAE of :func:`load_sae` reads: diffinterp's record, else SAELens's ``hook_name``."""
    return metadata["spec"].hook if "spec" in metadata else sae.cfg.metadata.hook_name
