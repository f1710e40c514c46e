"""Linear probes on frozen features, one per layer: what a layer's residual stream encodes linearly.

Jain et al. (2024) probe every layer's residual stream with a linear classifier trained with
AdamW (lr 1e-3, 4K iterations); :func:`fit_probe` is that classifier, one ``nn.Linear`` on the raw
features (nothing is standardised, so the returned layer applies as is to new features), trained
on minibatches drawn with a seeded generator so that a probe is a function of its inputs and seed.
:func:`probe_layers` fits one per layer and returns each test example's correctness, from which
the caller bootstraps confidence intervals.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_labels(y: torch.Tensor, n: int, n_classes: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class ids, got {y.dtype}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name}: class ids must be in 0..{n_classes - 1}, got {y.min().item()}..{y.max().item()}")
    return y.long()


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, iters: int, lr: float, batch_size: int, seed: int,
              weight_decay: float = 0.0) -> nn.Linear:  # fmt: skip
    """A linear probe ``nn.Linear(d, n_classes)`` fitted to (x (n, d), y (n,)) by AdamW on cross-entropy.

    Each of the ``iters`` steps takes a minibatch of ``batch_size`` rows; rows are drawn epoch by
    epoch from permutations of a ``torch.Generator`` seeded with ``seed`` (so each row is seen once
    per epoch), and the weights start at zero, so the result depends on the inputs and the seed only.
    Trained in float32 on ``x``'s device; returned in eval mode.
    """
    if x.dim() != 2:
        raise ValueError(f"x: expected (n, d), got shape {tuple(x.shape)}")
    n, d = x.shape
    if n == 0:
        raise ValueError("x: no rows to fit a probe on")
    if n_classes < 2:
        raise ValueError(f"n_classes: expected at least 2, got {n_classes}")
    if iters < 1 or batch_size < 1:
        raise ValueError(f"iters and batch_size must be positive, got iters={iters}, batch_size={batch_size}")
    x = x.detach().float()
    y = _check_labels(y, n, n_classes, "y").to(x.device)

    probe = nn.Linear(d, n_classes).to(x.device)
    # A zero start (the loss is convex in the weights): no dependence on the global RNG.
    with torch.no_grad():
        probe.weight.zero_()
        probe.bias.zero_()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    with torch.enable_grad():
        for _ in range(iters):
            while order.numel() < batch_size:
                order = torch.cat([order, torch.randperm(n, generator=generator)])
            rows, order = order[:batch_size].to(x.device), order[batch_size:]
            loss = nn.functional.cross_entropy(probe(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    probe.zero_grad(set_to_none=True)
    return probe.eval()


@torch.no_grad()
def probe_predictions(probe: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The probe's predicted class of each row of ``x`` (n, d): a LongTensor (n,) on ``x``'s device."""
    device = next(probe.parameters()).device
    return probe(x.detach().float().to(device)).argmax(-1).to(x.device)


def probe_layers(features: torch.Tensor, y_train: torch.Tensor, features_test: torch.Tensor, y_test: torch.Tensor,
                 n_classes: int, **fit_kw) -> list[dict]:  # fmt: skip
    """One probe per layer: fitted on ``features[l]`` (L, n_train, d), scored on ``features_test[l]`` (L, n_test, d).

    Returns one dict per layer: ``layer``, ``accuracy`` (float), ``n`` (the number of test rows) and
    ``correct`` (a list of bool, one per test row, for bootstrap intervals). ``fit_kw`` goes to
    :func:`fit_probe` (``iters``, ``lr``, ``batch_size``, ``seed``, ``weight_decay``); every layer
    uses the same seed.
    """
    if features.dim() != 3 or features_test.dim() != 3:
        raise ValueError(
            f"features and features_test: expected (layers, n, d), got {tuple(features.shape)} and "
            f"{tuple(features_test.shape)}"
        )
    if features.shape[0] != features_test.shape[0] or features.shape[2] != features_test.shape[2]:
        raise ValueError(
            f"features {tuple(features.shape)} and features_test {tuple(features_test.shape)}: "
            "different numbers of layers or widths"
        )
    n_test = features_test.shape[1]
    y_test = _check_labels(y_test, n_test, n_classes, "y_test")
    rows = []
    for layer in range(features.shape[0]):
        probe = fit_probe(features[layer], y_train, n_classes, **fit_kw)
        correct = probe_predictions(probe, features_test[layer]).cpu() == y_test.cpu()
        rows.append(
            {
                "layer": layer,
                "accuracy": correct.float().mean().item() if n_test else float("nan"),
                "n": n_test,
                "correct": correct.tolist(),
            }
        )
    return rows
