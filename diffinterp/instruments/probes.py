"""Linear probes per (step, layer) of a denoising cache, with held-out accuracy and a control.

    result = train_probes(cache, labels)       # labels: one per prompt of the cached batch
    result.accuracy                            # [steps, layers] held-out accuracy
    result.control                             # [steps, layers] same probes on shuffled labels (or a control task)
    result.selectivity()                       # accuracy - control

Each probe is a multinomial logistic regression on standardised features (the cached activation
at one step and layer, read at a canvas position or averaged over positions). All probes are
trained together, full batch, as one batched problem (Adam on cross-entropy + L2), so a grid of
steps × layers costs about as much as a few probes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diffinterp.records.cache import DenoisingCache

RESID_POST = "decoder.blocks.{layer}.hook_resid_post"


@dataclass
class ProbeResult:
    """Probe accuracies; ``[steps, layers]`` tensors labelled by ``steps`` and ``layers``.

    ``accuracy`` / ``train_accuracy``: held-out and training accuracy; ``control``: held-out accuracy
    of the same probes trained on the control labels (shuffled labels by default: chance level
    plus what memorisation buys); ``majority``: held-out accuracy of always guessing the most
    common training label; ``classes``: the label values, in class-index order.
    """

    accuracy: torch.Tensor
    train_accuracy: torch.Tensor
    control: torch.Tensor
    majority: float
    steps: list[int]
    layers: list[int]
    classes: list
    n_train: int
    n_test: int
    hook: str = RESID_POST
    position: str = "mean"
    control_kind: str = "shuffled labels"

    def selectivity(self) -> torch.Tensor:
        """``accuracy - control`` ``[steps, layers]``."""
        return self.accuracy - self.control


def encode_labels(labels) -> tuple[torch.Tensor, list]:
    """Labels (ints, strings, or any hashable values) as class indices ``[n]`` and the class values."""
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    labels = list(labels)
    classes = sorted(set(labels), key=lambda v: (str(type(v)), v))
    index = {value: i for i, value in enumerate(classes)}
    return torch.tensor([index[v] for v in labels], dtype=torch.long), classes


def probe_features(
    cache: DenoisingCache,
    *,
    hook: str = RESID_POST,
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    block: int = 0,
    position: int | Sequence[int] | str = "mean",
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Features ``[steps, layers, batch, d]`` from a cache, and the step and layer labels.

    ``position``: a canvas position, a list of positions (averaged), or ``"mean"`` (all positions).
    """
    if "{layer}" not in hook:
        raise ValueError(f"hook must be a template with '{{layer}}', e.g. '{RESID_POST}'; got '{hook}'")
    if layers is None:
        layers = []
        layer = 0
        while hook.format(layer=layer) in cache.names:
            layers.append(layer)
            layer += 1
        if not layers:
            raise KeyError(f"the cache holds no '{hook}' activations; record them with run_with_cache")
    layers = list(layers)
    for layer in layers:
        if hook.format(layer=layer) not in cache.names:
            raise KeyError(
                f"'{hook.format(layer=layer)}' is not in the cache (cached: {', '.join(cache.names[:6])}...)"
            )
    recorded = cache.steps(hook.format(layer=layers[0]), block)
    steps = recorded if steps is None else list(steps)
    rows = []
    for step in steps:
        per_layer = []
        for layer in layers:
            act = cache.get(hook.format(layer=layer), step, block).float()  # [batch, pos, d]
            n_pos = act.shape[1]
            if isinstance(position, str):
                if position != "mean":
                    raise ValueError(f"position must be an int, a list of ints or 'mean', got '{position}'")
                per_layer.append(act.mean(1))
            else:
                chosen = [position] if isinstance(position, int) else list(position)
                bad = [p for p in chosen if not 0 <= p < n_pos]
                if bad:
                    raise IndexError(f"position {bad[0]} out of range (valid 0..{n_pos - 1})")
                per_layer.append(act[:, chosen].mean(1))
        rows.append(torch.stack(per_layer))
    return torch.stack(rows), steps, layers


def _fit(x_train, y_train, n_classes, *, l2, epochs, lr, seed):
    """Batched multinomial logistic regression: x ``[K, n, d]`` -> (weight ``[K, d, C]``, bias ``[K, 1, C]``)."""
    generator = torch.Generator().manual_seed(seed)
    k, _, d = x_train.shape
    weight = (torch.randn(k, d, n_classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(k, 1, n_classes, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=lr)
    target = y_train.expand(k, -1).reshape(-1)
    with torch.enable_grad():
        for _ in range(epochs):
            optimiser.zero_grad()
            logits = torch.baddbmm(bias, x_train, weight)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), target) * k
            loss = loss + l2 * weight.pow(2).sum()
            loss.backward()
            optimiser.step()
    return weight.detach(), bias.detach()


def _accuracy(weight, bias, x, y) -> torch.Tensor:
    return (torch.baddbmm(bias, x, weight).argmax(-1) == y).float().mean(-1)


def fit_probes(
    features: torch.Tensor,
    labels,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    control=None,
    l2: float = 1e-3,
    epochs: int = 300,
    lr: float = 0.05,
) -> dict:
    """Train one probe per leading index of ``features`` ``[..., n, d]``; accuracies ``[...]``.

    ``control``: None (labels shuffled across examples with ``seed``) or control labels ``[n]``.
    Returns ``accuracy``, ``train_accuracy``, ``control``, ``majority``, ``classes``, ``n_train``, ``n_test``.
    """
    y, classes = encode_labels(labels)
    *grid, n, d = features.shape
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} examples: give one label per prompt of the cached batch")
    if len(classes) < 2:
        raise ValueError(f"probing needs at least 2 label values, got only {classes}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 2:
        raise ValueError(f"{n} examples are too few for a held-out split with test_fraction={test_fraction}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    test, train = order[:n_test], order[n_test:]
    x = features.reshape(-1, n, d).float()
    mean = x[:, train].mean(1, keepdim=True)
    std = x[:, train].std(1, keepdim=True).clamp(min=1e-6)
    x = (x - mean) / std
    if control is None:
        y_control = y[torch.randperm(n, generator=generator)]
        control_kind = "shuffled labels"
    else:
        y_control, _ = encode_labels(control)
        if len(y_control) != n:
            raise ValueError(f"{len(y_control)} control labels for {n} examples")
        control_kind = "control task"
    results = {}
    for key, target in (("main", y), ("control", y_control)):
        n_classes = int(target.max()) + 1
        weight, bias = _fit(x[:, train], target[train], n_classes, l2=l2, epochs=epochs, lr=lr, seed=seed)
        results[key] = (
            _accuracy(weight, bias, x[:, test], target[test]).view(grid),
            _accuracy(weight, bias, x[:, train], target[train]).view(grid),
        )
    counts = torch.bincount(y[train], minlength=len(classes))
    majority = float((y[test] == counts.argmax()).float().mean())
    return {
        "accuracy": results["main"][0],
        "train_accuracy": results["main"][1],
        "control": results["control"][0],
        "majority": majority,
        "classes": classes,
        "n_train": len(train),
        "n_test": n_test,
        "control_kind": control_kind,
    }


def train_probes(
    cache: DenoisingCache,
    labels,
    *,
    hook: str = RESID_POST,
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    block: int = 0,
    position: int | Sequence[int] | str = "mean",
    test_fraction: float = 0.3,
    seed: int = 0,
    control=None,
    l2: float = 1e-3,
    epochs: int = 300,
    lr: float = 0.05,
) -> ProbeResult:
    """A linear probe per (step, layer) of ``cache`` predicting ``labels`` (one per prompt of its batch).

    Held-out split: ``test_fraction`` of the prompts, drawn with ``seed``. ``control``: None for a
    shuffled-label baseline, or control-task labels (e.g. a random function of a nuisance variable).
    """
    features, steps, layers = probe_features(
        cache, hook=hook, layers=layers, steps=steps, block=block, position=position
    )
    fit = fit_probes(
        features, labels, test_fraction=test_fraction, seed=seed, control=control, l2=l2, epochs=epochs, lr=lr
    )
    return ProbeResult(
        fit["accuracy"],
        fit["train_accuracy"],
        fit["control"],
        fit["majority"],
        steps,
        layers,
        fit["classes"],
        fit["n_train"],
        fit["n_test"],
        hook,
        str(position),
        fit["control_kind"],
    )


__all__ = ["ProbeResult", "encode_labels", "fit_probes", "probe_features", "train_probes"]
