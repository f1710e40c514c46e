"""Seeded percentile bootstrap of a mean."""

from __future__ import annotations

import numpy as np

# Largest index matrix drawn at once (elements); above it the resamples are drawn in row blocks
# so memory stays bounded (5e7 int64 indices ≈ 400 MB).
MAX_DRAW_ELEMENTS = 50_000_000


def check_settings(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def percentile_ci(scores: np.ndarray, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores``.

    Definition: with ``rng = np.random.default_rng(seed)``, draw ``resamples`` resamples of size
    ``n = len(scores)`` with replacement (one index matrix ``rng.integers(0, n, size=(resamples, n))``;
    for ``resamples * n > MAX_DRAW_ELEMENTS`` the same call is made for consecutive blocks of rows),
    take the mean of each resample, and return the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` percentiles of those means (numpy's default ``'linear'`` method).
    The result depends only on ``scores``, ``resamples``, ``confidence`` and ``seed``.

    Edge cases: ``n == 0`` gives ``(nan, nan)``; ``n == 1`` gives ``(x, x)``.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = scores.size
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        return float(scores[0]), float(scores[0])
    check_settings(resamples, confidence)

    rng = np.random.default_rng(seed)
    block = max(1, MAX_DRAW_ELEMENTS // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        means[start : start + rows] = scores[idx].mean(axis=1)
    low, high = np.percentile(means, [100.0 * (1.0 - confidence) / 2.0, 100.0 * (1.0 + confidence) / 2.0])
    return float(low), float(high)
