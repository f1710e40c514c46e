"""Seeded percentile bootstrap of a mean, or of any statistic of resampled examples."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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

    means = np.empty(resamples, dtype=np.float64)
    for start, idx in _index_blocks(n, resamples, seed):
        means[start : start + len(idx)] = scores[idx].mean(axis=1)
    return _percentiles(means, confidence)


def resampled_ci(
    statistic: Callable[[np.ndarray], float], n: int, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of any statistic of ``n`` examples, e.g. a corpus-level metric.

    Definition: ``statistic(idx)`` is the statistic of the examples at the positions ``idx`` (a 1-D
    int64 array of length ``n``, repeats allowed). The resamples are the rows of the index matrix
    :func:`percentile_ci` draws for ``n``, ``resamples`` and ``seed`` (same generator, same blocks), so
    with ``statistic = lambda idx: scores[idx].mean()`` this is ``percentile_ci(scores, ...)`` up to float
    rounding, and two statistics given the same ``n`` and ``seed`` see the same resamples (a paired
    bootstrap). Returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles
    (numpy's ``'linear'``) of the ``resamples`` values ``statistic(row)``.

    Edge cases, as :func:`percentile_ci`: ``n == 0`` gives ``(nan, nan)``; ``n == 1`` gives ``(v, v)``
    with ``v = statistic([0])``, the only resample there is.
    """
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        value = float(statistic(np.zeros(1, dtype=np.int64)))
        return value, value
    check_settings(resamples, confidence)

    values = np.empty(resamples, dtype=np.float64)
    for start, idx in _index_blocks(n, resamples, seed):
        for k, row in enumerate(idx):
            values[start + k] = statistic(row)
    return _percentiles(values, confidence)


def _index_blocks(n: int, resamples: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first resample, index matrix) per block of rows, drawn in order from one seeded generator."""
    rng = np.random.default_rng(seed)
    block = max(1, MAX_DRAW_ELEMENTS // n)
    for start in range(0, resamples, block):
        yield start, rng.integers(0, n, size=(min(block, resamples - start), n))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.percentile(values, [100.0 * (1.0 - confidence) / 2.0, 100.0 * (1.0 + confidence) / 2.0])
    return float(low), float(high)
