"""Calibration of a classifier's probabilities, as in the LP-FT study (Tomihari & Sato 2024).

Pure functions on numpy arrays, computed in float64. ``probs`` is an ``(n, K)`` array of class
probabilities (rows sum to 1 within 1e-6), ``logits`` an ``(n, K)`` array of finite scores, ``labels``
the ``n`` gold class indices in ``[0, K)``.

Definitions:

- Confidence ``c_i = max_k p_ik``; prediction ``argmax_k p_ik``, ties to the lowest index.
- Bins: ``B`` equal-width bins on the confidence, with edges ``e_b = b / B`` (the float64 quotient).
  The first bin is ``[0, e_1]``, bin ``b >= 1`` is ``(e_b, e_{b+1}]``: a confidence exactly on an
  inner edge belongs to the bin below it, and 1.0 to the last bin. This is the bin rule of Guo et al.
  (2017), ``I_m = ((m - 1) / M, m / M]``, with 0 added to the first bin. For ``K`` classes
  ``c_i >= 1 / K``, so the bins below ``1 / K`` are always empty.
- ``acc(B_b)`` is the fraction of correct predictions in bin ``b``, ``conf(B_b)`` the mean confidence there.
- ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` (empty bins contribute 0), a fraction in
  ``[0, 1]``, not percent.
- ``MCE = max over non-empty bins of |acc(B_b) - conf(B_b)|``.
- Brier score ``= (1/n) sum_i sum_k (p_ik - 1[y_i = k])^2``, in ``[0, 2]``. This is sklearn's
  ``brier_score_loss(y, p, labels=range(K), scale_by_half=False)``; with its default
  ``scale_by_half="auto"`` sklearn 1.9 halves the score when ``K = 2`` (also for a 2-column ``p``) and
  not when ``K > 2``.
- NLL ``= -(1/n) sum_i log softmax(z_i / T)_{y_i}``, computed by ``log_softmax`` on the logits, so it
  stays finite where a probability underflows to 0.
- Temperature scaling (Guo et al. 2017): the single ``T > 0`` minimising the NLL of
  ``softmax(z / T)`` on a validation set, then applied to the test logits. Dividing by ``T > 0`` keeps
  the order of every row's logits, hence the predictions and the accuracy.
- Matthews correlation: Gorodkin's (2004) ``R_K``, what ``sklearn.metrics.matthews_corrcoef`` computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import log_softmax
from scipy.special import softmax as _scipy_softmax

ROW_SUM_TOLERANCE = 1e-6
# The search interval of fit_temperature, in T. Temperatures fitted to classifiers lie near 1-5
# (Guo et al. 2017); a minimum on a bound means no finite minimiser (e.g. a separable validation set).
TEMPERATURE_BOUNDS = (1e-2, 1e2)


def _check_labels(labels, n: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one entry per row ({n}), got shape {labels.shape}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels[i]} at index {i}")
    return labels.astype(np.int64)


def _check_matrix(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_examples, n_classes), got shape {values.shape}")
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"{name} must have at least one example and one class, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite")
    return values


def _check_probs(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs = _check_matrix(probs, "probs")
    if (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must lie in [0, 1]")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"probs rows must sum to 1 within {ROW_SUM_TOLERANCE}: row {i} sums to {sums[i]!r}")
    return probs, _check_labels(labels, *probs.shape)


def _check_logits(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits = _check_matrix(logits, "logits")
    return logits, _check_labels(labels, *logits.shape)


def _check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


def _check_temperature(T) -> float:
    T = float(T)
    if not (math.isfinite(T) and T > 0):
        raise ValueError(f"the temperature must be finite and > 0, got {T!r}")
    return T


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    # The number of inner edges strictly below c: an edge value itself goes to the bin below it.
    inner_edges = np.arange(1, bins, dtype=np.float64) / bins
    return np.searchsorted(inner_edges, confidence, side="left")


def _bin_sums(probs, labels, bins) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per bin: number of examples, number correct, sum of confidences; and n."""
    probs, labels = _check_probs(probs, labels)
    bins = _check_bins(bins)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = _bin_index(confidence, bins)
    count = np.bincount(index, minlength=bins)
    n_correct = np.bincount(index, weights=correct, minlength=bins)
    sum_confidence = np.bincount(index, weights=confidence, minlength=bins)
    return count, n_correct, sum_confidence, probs.shape[0]


def softmax(logits, T: float = 1.0) -> np.ndarray:
    """``softmax(z / T)`` over the classes (axis 1) of an ``(n, K)`` logit array, float64."""
    logits = _check_matrix(logits, "logits")
    return _scipy_softmax(logits / _check_temperature(T), axis=1)


def accuracy(probs, labels) -> float:
    """Fraction of examples whose ``argmax_k p_ik`` (ties: lowest index) is the gold label."""
    probs, labels = _check_probs(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def ece(probs, labels, bins: int = 15) -> float:
    """Expected calibration error ``sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` (module docstring), in [0, 1]."""
    count, n_correct, sum_confidence, n = _bin_sums(probs, labels, bins)
    # |B_b| / n * |acc - conf| = |correct_b - sum of confidences_b| / n: no division by an empty bin.
    return float(np.abs(n_correct - sum_confidence).sum() / n)


def mce(probs, labels, bins: int = 15) -> float:
    """Maximum calibration error ``max over non-empty bins of |acc(B_b) - conf(B_b)|`` (module docstring)."""
    count, n_correct, sum_confidence, _ = _bin_sums(probs, labels, bins)
    full = count > 0
    return float(np.max(np.abs(n_correct[full] - sum_confidence[full]) / count[full]))


def reliability(probs, labels, bins: int = 15):
    """One row per bin, for reliability diagrams: ``bin_low``, ``bin_high`` (the edges ``b / B`` and
    ``(b + 1) / B``), ``count``, ``accuracy`` and ``confidence`` (the bin's mean; NaN for an empty bin).

    ``ece == sum(count / n * |accuracy - confidence|)`` over the non-empty rows.
    """
    import pandas as pd

    bins = _check_bins(bins)
    count, n_correct, sum_confidence, _ = _bin_sums(probs, labels, bins)
    edges = np.arange(bins + 1, dtype=np.float64) / bins
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, n_correct / count, np.nan)
        conf = np.where(count > 0, sum_confidence / count, np.nan)
    return pd.DataFrame(
        {"bin_low": edges[:-1], "bin_high": edges[1:], "count": count, "accuracy": acc, "confidence": conf}
    )


def brier(probs, labels) -> float:
    """Multi-class Brier score ``(1/n) sum_i sum_k (p_ik - 1[y_i = k])^2``, in [0, 2], not halved.

    Equals ``sklearn.metrics.brier_score_loss(labels, probs, labels=range(K), scale_by_half=False)``.
    """
    probs, labels = _check_probs(probs, labels)
    onehot = np.zeros_like(probs)
    onehot[np.arange(probs.shape[0]), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(logits, labels, T: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold label, ``-(1/n) sum_i log_softmax(z_i / T)_{y_i}``."""
    logits, labels = _check_logits(logits, labels)
    return _nll(logits, labels, _check_temperature(T))


def _nll(logits: np.ndarray, labels: np.ndarray, T: float) -> float:
    log_p = log_softmax(logits / T, axis=1)
    return float(-np.mean(log_p[np.arange(logits.shape[0]), labels]))


def fit_temperature(logits, labels) -> float:
    """The ``T > 0`` minimising ``nll(logits, labels, T)`` (temperature scaling, Guo et al. 2017).

    Searched as ``s = log T`` over ``log TEMPERATURE_BOUNDS`` by bounded Brent minimisation
    (deterministic). The NLL is convex in ``1 / T``, so unimodal in ``s`` and Brent finds the global
    minimum; scipy's stopping rule resolves ``s`` to about 1e-7, i.e. ``T`` to a relative 1e-7. Raises
    ValueError if the NLL at either bound is not above the NLL at the minimum found: there is then no
    minimiser inside the interval (as when every validation example is classified correctly and the
    NLL keeps falling as ``T -> 0``, or when the logits are constant in each row and any ``T`` fits).
    """
    from scipy.optimize import minimize_scalar

    logits, labels = _check_logits(logits, labels)
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda s: _nll(logits, labels, math.exp(s)), bounds=(low, high), method="bounded", options={"xatol": 1e-9}
    )
    if not result.success:
        raise ValueError(f"temperature fit did not converge: {result.message}")
    s = float(result.x)
    # Unimodal, so an interior minimum is strictly below both ends; otherwise the NLL keeps falling (or stays
    # flat, as when it underflows to 0 on a separable set) towards an end, and any T returned would be arbitrary.
    best = _nll(logits, labels, math.exp(s))
    if min(_nll(logits, labels, b) for b in TEMPERATURE_BOUNDS) <= best:
        raise ValueError(
            f"the NLL has no minimum inside the temperature interval {TEMPERATURE_BOUNDS}: it does not rise towards "
            "a bound (every validation example classified correctly, or logits constant in each row)"
        )
    return math.exp(s)


def calibration_summary(logits_test, labels_test, logits_val, labels_val, bins: int = 15) -> dict[str, float]:
    """Temperature fitted on the validation set, and the test metrics before (``T = 1``) and after scaling.

    Keys: ``temperature``; ``ece``, ``mce``, ``brier``, ``nll``, ``accuracy`` each with suffix ``_before``
    and ``_after``. Accuracy is the same before and after (scaling keeps each row's argmax).
    """
    logits_test, labels_test = _check_logits(logits_test, labels_test)
    T = fit_temperature(logits_val, labels_val)
    summary: dict[str, float] = {"temperature": T}
    for suffix, t in (("before", 1.0), ("after", T)):
        probs = softmax(logits_test, t)
        summary[f"ece_{suffix}"] = ece(probs, labels_test, bins)
        summary[f"mce_{suffix}"] = mce(probs, labels_test, bins)
        summary[f"brier_{suffix}"] = brier(probs, labels_test)
        summary[f"nll_{suffix}"] = _nll(logits_test, labels_test, t)
        summary[f"accuracy_{suffix}"] = accuracy(probs, labels_test)
    return summary


def matthews(predictions: Sequence, labels: Sequence) -> float:
    """Multi-class Matthews correlation coefficient, Gorodkin's ``R_K`` (sklearn's ``matthews_corrcoef``).

    With ``C`` the confusion matrix over the union of the classes in both sequences (any comparable
    values: ints or strings), ``t_k`` the number of gold labels ``k``, ``p_k`` the number of predictions
    ``k``, ``c`` the number correct and ``s = n``:
    ``(c * s - t . p) / sqrt((s^2 - p . p) * (s^2 - t . t))``, and 0.0 when that denominator is 0
    (all predictions, or all labels, one class). In [-1, 1].
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 1 or labels.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must be 1-D of one length, got shapes {predictions.shape} and {labels.shape}"
        )
    if predictions.size == 0:
        raise ValueError("matthews needs at least one example")
    _, index = np.unique(np.concatenate([predictions, labels]), return_inverse=True)
    index = index.reshape(-1)
    n, n_classes = predictions.size, int(index.max()) + 1
    p = np.bincount(index[:n], minlength=n_classes).astype(np.float64)
    t = np.bincount(index[n:], minlength=n_classes).astype(np.float64)
    c = float(np.sum(index[:n] == index[n:]))
    s = float(n)
    denominator = (s * s - p @ p) * (s * s - t @ t)
    if denominator == 0:
        return 0.0
    return float((c * s - t @ p) / math.sqrt(denominator))
