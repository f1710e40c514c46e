"""The LP-FT study's feature quantities against their written-out definitions."""

import numpy as np
import pytest

from ptft.evaluate.classifier_measures import feature_quantities, mean_pairwise_cosine


def test_the_mean_pairwise_cosine_is_the_mean_over_pairs_of_distinct_examples():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(7, 5))
    pairs = [f[i] @ f[j] / np.linalg.norm(f[i]) / np.linalg.norm(f[j]) for i in range(7) for j in range(7) if i != j]
    assert mean_pairwise_cosine(f) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert mean_pairwise_cosine(np.ones((4, 3))) == pytest.approx(1.0)  # collinear features
    assert np.isnan(mean_pairwise_cosine(f[:1]))


def test_feature_change_and_norms_are_means_over_examples():
    start = np.array([[1.0, 0.0], [0.0, 2.0]])
    feats = np.array([[4.0, 4.0], [0.0, 2.0]])
    logits = np.array([[3.0, 4.0], [0.0, 1.0]])
    q = feature_quantities(feats, start, logits)
    assert q["feature_change"] == pytest.approx((5.0 + 0.0) / 2)  # ||(3, 4)|| and 0
    assert q["feature_norm"] == pytest.approx((np.sqrt(32) + 2) / 2)
    assert q["feature_norm_start"] == pytest.approx(1.5)
    assert q["logit_norm"] == pytest.approx((5.0 + 1.0) / 2)
    assert q["feature_cosine_start"] == pytest.approx(0.0)
    assert q["feature_cosine"] == pytest.approx(np.sqrt(0.5))
