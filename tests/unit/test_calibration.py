"""Calibration metrics: hand-computed bins, sklearn anchors, and temperature scaling on synthetic data."""

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, matthews_corrcoef

from ptft.evaluate.calibration import (
    accuracy,
    brier,
    calibration_summary,
    ece,
    fit_temperature,
    matthews,
    mce,
    nll,
    reliability,
    softmax,
)
from ptft.evaluate.metrics import get_metric


def sample_labels(rng, probs):
    u = rng.random(probs.shape[0])
    # min() guards a u above the last cumulative sum when rounding leaves it just under 1.
    return np.minimum((np.cumsum(probs, axis=1) < u[:, None]).sum(axis=1), probs.shape[1] - 1)


# Confidences 0.6 and 0.8 lie exactly on edges of 5 bins: with (lo, hi] they go to the bins below,
# with [lo, hi) the ECE would be 0.15 and the MCE 0.15.
EDGE_PROBS = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.2, 0.8]])
EDGE_LABELS = np.array([0, 0, 0, 1])


def test_ece_and_mce_by_hand_with_confidences_on_bin_edges():
    # (0.4, 0.6]: {0.6 right}: gap 0.4; (0.6, 0.8]: {0.7 wrong, 0.8 right}: |0.5 - 0.75| = 0.25;
    # (0.8, 1]: {0.9 right}: gap 0.1.
    assert ece(EDGE_PROBS, EDGE_LABELS, bins=5) == pytest.approx(1 / 4 * 0.4 + 2 / 4 * 0.25 + 1 / 4 * 0.1, abs=1e-15)
    assert mce(EDGE_PROBS, EDGE_LABELS, bins=5) == pytest.approx(0.4, abs=1e-15)
    table = reliability(EDGE_PROBS, EDGE_LABELS, bins=5)
    assert table["count"].tolist() == [0, 0, 1, 2, 1]
    np.testing.assert_allclose(table["bin_low"], [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(table["bin_high"], [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(table["accuracy"], [np.nan, np.nan, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(table["confidence"], [np.nan, np.nan, 0.6, 0.75, 0.9])


def test_first_edge_and_one_go_to_the_first_and_last_bins():
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    assert reliability(probs, [0, 0, 1], bins=2)["count"].tolist() == [1, 2]
    # 7/15 as float64 is the edge between bins 6 and 7 of 15: it belongs to bin 6.
    c = 7 / 15
    assert reliability(np.array([[c, c, 1 - 2 * c]]), [0])["count"].tolist() == [0] * 6 + [1] + [0] * 8


def test_ties_predict_the_lowest_index():
    tie = np.array([[0.4, 0.4, 0.2]])
    assert accuracy(tie, [0]) == 1.0 and accuracy(tie, [1]) == 0.0
    assert reliability(tie, [0], bins=5)["accuracy"].tolist()[1] == 1.0  # 0.4 is in (0.2, 0.4]
    assert ece(tie, [0], bins=5) == pytest.approx(0.6) and ece(tie, [1], bins=5) == pytest.approx(0.4)


def test_reliability_table_reproduces_ece_and_mce():
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(0, 3, (500, 5)))
    labels = rng.integers(0, 5, 500)
    table = reliability(probs, labels).dropna()
    gaps = (table["accuracy"] - table["confidence"]).abs()
    assert ece(probs, labels) == pytest.approx(float((table["count"] / 500 * gaps).sum()), rel=1e-12)
    assert mce(probs, labels) == pytest.approx(float(gaps.max()), rel=1e-12)
    assert table["count"].sum() == 500


def test_calibrated_sample_has_small_ece_and_overconfident_large():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(4, 0.5), 20000)
    labels = sample_labels(rng, probs)
    assert ece(probs, labels) < 0.02
    overconfident = softmax(np.log(probs), T=1 / 3)
    assert ece(overconfident, labels) > 0.15
    assert mce(overconfident, labels) > ece(overconfident, labels)


def test_brier_matches_sklearn_unscaled():
    rng = np.random.default_rng(2)
    for k in (2, 3, 7):
        probs = softmax(rng.normal(0, 2, (300, k)))
        labels = rng.integers(0, k, 300)
        expected = brier_score_loss(labels, probs, labels=list(range(k)), scale_by_half=False)
        assert brier(probs, labels) == pytest.approx(expected, rel=1e-12)
    # sklearn's default halves only the binary score.
    probs2 = softmax(rng.normal(0, 2, (50, 2)))
    labels2 = rng.integers(0, 2, 50)
    assert brier_score_loss(labels2, probs2, labels=[0, 1]) == pytest.approx(brier(probs2, labels2) / 2, rel=1e-12)
    assert brier(np.array([[1.0, 0.0], [1.0, 0.0]]), [0, 1]) == 1.0  # one-hot wrong: 1 + 1 per example, mean 1


def test_nll_matches_sklearn_log_loss_and_stays_finite():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (400, 6))
    labels = rng.integers(0, 6, 400)
    for t in (1.0, 0.5, 3.0):
        expected = log_loss(labels, softmax(logits, t), labels=list(range(6)))
        assert nll(logits, labels, t) == pytest.approx(expected, rel=1e-10)
    # The gold label's probability underflows to 0; log_softmax still gives its exact log.
    assert nll(np.array([[0.0, 2000.0]]), [0]) == pytest.approx(2000.0, rel=1e-15)


def test_softmax_rows_sum_to_one_and_temperature_divides():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
    np.testing.assert_allclose(softmax(logits).sum(axis=1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(softmax(logits, T=2.0), softmax(logits / 2.0), rtol=1e-15)
    assert softmax(logits).dtype == np.float64


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 4, (20000, 4))
    labels = sample_labels(rng, softmax(logits, T=2.5))
    t = fit_temperature(logits, labels)
    # Sampling spread of the fit over seeds is 0.03 at this n; 0.12 is four of those.
    assert t == pytest.approx(2.5, abs=0.12)
    # A minimum to 1e-4 in T: stepping 1e-4 either way does not lower the NLL, and d NLL / d(1/T) = 0, i.e.
    # mean_i (E_p[z_i] - z_i,y_i) with p = softmax(z_i / T).
    assert nll(logits, labels, t) <= min(nll(logits, labels, t - 1e-4), nll(logits, labels, t + 1e-4))
    p = softmax(logits, t)
    gradient = np.mean((p * logits).sum(axis=1) - logits[np.arange(len(labels)), labels])
    assert abs(gradient) < 1e-6
    assert fit_temperature(logits, labels) == t  # deterministic


def test_fit_temperature_refuses_a_set_without_a_finite_optimum():
    separable = np.array([[3.0, 0.0], [0.0, 3.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="no minimum inside"):
        fit_temperature(separable, [0, 1, 0])
    with pytest.raises(ValueError, match="no minimum inside"):
        fit_temperature(np.ones((4, 3)), [0, 1, 2, 0])
    # One mistake is enough for an interior optimum.
    assert 0.01 < fit_temperature(separable, [0, 1, 1]) < 100


def test_temperature_scaling_calibrates_overconfident_logits_and_keeps_accuracy():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, (8000, 5))
    labels = sample_labels(rng, softmax(z))
    overconfident = 3.0 * z  # the true temperature is 3
    val, test = slice(0, 4000), slice(4000, None)
    summary = calibration_summary(overconfident[test], labels[test], overconfident[val], labels[val])
    assert set(summary) == {"temperature"} | {
        f"{m}_{s}" for m in ("ece", "mce", "brier", "nll", "accuracy") for s in ("before", "after")
    }
    assert summary["temperature"] == pytest.approx(3.0, abs=0.2)
    assert summary["nll_after"] < summary["nll_before"]
    assert summary["ece_after"] < summary["ece_before"] / 3
    assert summary["brier_after"] < summary["brier_before"]
    assert summary["accuracy_after"] == summary["accuracy_before"]
    assert summary["accuracy_before"] == np.mean(z[test].argmax(axis=1) == labels[test])
    probs_after = softmax(overconfident[test], summary["temperature"])
    assert summary["ece_after"] == ece(probs_after, labels[test])
    assert summary["nll_after"] == pytest.approx(log_loss(labels[test], probs_after, labels=list(range(5))))


def test_matthews_matches_sklearn():
    rng = np.random.default_rng(6)
    for k in (2, 3, 6):
        labels = rng.integers(0, k, 200)
        predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, k, 200))
        assert matthews(predictions, labels) == pytest.approx(matthews_corrcoef(labels, predictions), rel=1e-12)
    words = ["acceptable", "unacceptable"]
    gold, pred = rng.choice(words, 100), rng.choice(words, 100)
    assert matthews(pred, gold) == pytest.approx(matthews_corrcoef(gold, pred), rel=1e-12)
    assert matthews([0, 1, 2, 1], [0, 1, 2, 1]) == 1.0
    assert matthews([1, 0], [0, 1]) == -1.0
    # A constant prediction makes the denominator 0: 0.0, as sklearn.
    assert matthews([1, 1, 1], [0, 1, 0]) == 0.0 == matthews_corrcoef([0, 1, 0], [1, 1, 1])


def test_mcc_is_registered_as_a_corpus_level_metric():
    metric = get_metric("mcc")
    assert metric.higher_is_better is True
    assert metric.per_example is None
    assert "Matthews" in metric.definition


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.array([0.5, 0.5]), [0], "2-D"),
        (np.zeros((0, 2)), [], "at least one"),
        (np.array([[0.5, 0.4]]), [0], "row 0 sums to"),
        (np.array([[1.5, -0.5]]), [0], r"\[0, 1\]"),
        (np.array([[np.nan, 1.0]]), [0], "finite"),
        (np.array([[0.5, 0.5]]), [2], r"\[0, 2\), got 2 at index 0"),
        (np.array([[0.5, 0.5]]), [-1], r"\[0, 2\)"),
        (np.array([[0.5, 0.5]]), [0.0], "integer"),
        (np.array([[0.5, 0.5]]), [True], "integer"),
        (np.array([[0.5, 0.5]]), [0, 1], "one entry per row"),
    ],
)
def test_probability_inputs_are_validated(probs, labels, message):
    for fn in (ece, mce, brier, accuracy, reliability):
        with pytest.raises(ValueError, match=message):
            fn(probs, labels)


def test_other_inputs_are_validated():
    with pytest.raises(ValueError, match="bins"):
        ece(EDGE_PROBS, EDGE_LABELS, bins=0)
    with pytest.raises(ValueError, match="bins"):
        mce(EDGE_PROBS, EDGE_LABELS, bins=2.5)
    with pytest.raises(ValueError, match="logits must be 2-D"):
        nll(np.zeros(3), [0, 0, 0])
    with pytest.raises(ValueError, match="labels must lie"):
        fit_temperature(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="temperature"):
        softmax(np.zeros((1, 2)), T=0.0)
    with pytest.raises(ValueError, match="temperature"):
        nll(np.zeros((1, 2)), [0], T=-1.0)
    with pytest.raises(ValueError, match="one length"):
        matthews([0, 1], [0])
    with pytest.raises(ValueError, match="at least one"):
        matthews([], [])
    assert not math.isnan(ece(EDGE_PROBS.tolist(), EDGE_LABELS.tolist(), bins=5))  # lists are accepted
