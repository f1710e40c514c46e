"""A corpus-level metric (mcc) in the performance table: its value, its bootstrap and its paired change interval."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import matthews_corrcoef

from ptft.aggregate.bootstrap import percentile_ci, resampled_ci
from ptft.aggregate.performance import performance_table, row_seed
from ptft.evaluate.calibration import matthews
from ptft.evaluate.metrics import AGGREGATIONS, METRICS, Metric, get_metric, register_metric

MANIFEST = {"checkpoints": [{"name": "step20", "step": 20, "tokens": 81920, "path": "x/step20"}]}
BASE_MODEL, FT_MODEL = "base/step20", "ft/step20/cola/full/lr0.001/seed0"
WORDS = ("acceptable", "unacceptable")
# Hand-checkable: TP = 3, TN = 2, FP = 1, FN = 2 (positive "acceptable"), so
# MCC = (3*2 - 1*2) / sqrt(4 * 5 * 3 * 4) = 4 / sqrt(240).
GOLD = ["acceptable"] * 5 + ["unacceptable"] * 3
PRED = ["acceptable"] * 3 + ["unacceptable"] * 2 + ["acceptable"] + ["unacceptable"] * 2


def rows(model: str, preds, golds, metric: str = "mcc", eval_set: str = "toy_cola", ids=None) -> list[dict]:
    finetuned = model != BASE_MODEL
    meta = {
        "model": model,
        "checkpoint": "step20",
        "train_task": "cola" if finetuned else "none",
        "method": "full" if finetuned else "base",
        "lr": 0.001 if finetuned else None,
        "seed": 0 if finetuned else None,
        "shots": 0 if finetuned else 4,
        "eval_set": eval_set,
        "eval_task": "cola",
        "eval_kind": "classification",
        "format": "default",
        "relation": "in-domain" if finetuned else "pretraining",
        "metric": metric,
    }
    ids = range(len(preds)) if ids is None else ids
    # score holds per-example correctness, as the scorer writes it; a corpus metric must not average it.
    return [
        {**meta, "example_id": i, "prediction": p, "gold": g, "score": float(p == g)}
        for i, p, g in zip(ids, preds, golds, strict=True)
    ]


def frame(*parts: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame([r for part in parts for r in part])
    df["lr"] = df["lr"].astype("float64")
    df["seed"] = df["seed"].astype("Int64")
    return df


def table(df: pd.DataFrame, resamples: int = 200, seed: int = 0) -> pd.DataFrame:
    return performance_table(df, MANIFEST, "toy", resamples=resamples, confidence=0.95, seed=seed)


def row(perf: pd.DataFrame, model: str, metric: str = "mcc") -> pd.Series:
    found = perf[(perf["metric"] == metric) & (perf["checkpoint"] == "step20")]
    found = found[found["method"] == ("base" if model == BASE_MODEL else "full")]
    assert len(found) == 1
    return found.iloc[0]


def labels(n: int, agree: float, seed: int) -> tuple[list[str], list[str]]:
    """n gold labels and predictions that copy the gold with probability ``agree``, else are drawn at random."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(WORDS, n)
    pred = np.where(rng.random(n) < agree, gold, rng.choice(WORDS, n))
    return pred.tolist(), gold.tolist()


# --- the registry ------------------------------------------------------------------------------


def test_mcc_registers_its_corpus_function():
    mcc = get_metric("mcc")
    assert mcc.aggregation == "corpus" and mcc.per_example is None
    assert mcc.corpus(PRED, GOLD) == pytest.approx(4 / np.sqrt(240), rel=1e-12)
    assert mcc.corpus(PRED, GOLD) == matthews(PRED, GOLD)
    assert all((m.corpus is not None) == (m.aggregation == "corpus") for m in METRICS.values())
    assert {m.aggregation for m in METRICS.values()} <= set(AGGREGATIONS)


@pytest.mark.parametrize(
    ("aggregation", "corpus", "message"),
    [
        ("corpus", None, "corpus function is required"),
        ("mean", matthews, "corpus function is required"),
        ("median", None, "aggregation must be one of"),
    ],
)
def test_a_corpus_function_goes_with_corpus_aggregation_only(aggregation, corpus, message):
    with pytest.raises(ValueError, match=message):
        register_metric(Metric("throwaway", "x", True, aggregation=aggregation, corpus=corpus))
    assert "throwaway" not in METRICS


def test_the_metric_registry_stays_light():
    # ptft.data.tasks reaches the registry on every task lookup; calibration would bring scipy with it.
    code = (
        "import sys, ptft.evaluate.metrics; print('scipy' in sys.modules, 'ptft.evaluate.calibration' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- the value ---------------------------------------------------------------------------------


def test_value_is_the_corpus_mcc_not_the_mean_score():
    perf = table(frame(rows(BASE_MODEL, PRED, GOLD)))
    got = row(perf, BASE_MODEL)
    assert got["value"] == pytest.approx(matthews_corrcoef(GOLD, PRED), rel=1e-12)
    assert got["value"] == pytest.approx(4 / np.sqrt(240), rel=1e-12)
    assert got["value"] != pytest.approx(np.mean([p == g for p, g in zip(PRED, GOLD, strict=True)]))
    assert got["n"] == len(GOLD)
    assert got["ci_low"] <= got["value"] <= got["ci_high"]
    assert np.isnan(got["diff_ci_low"]) and np.isnan(got["diff_ci_high"])


def test_multiclass_value_matches_sklearn():
    rng = np.random.default_rng(3)
    gold = rng.choice(["a", "b", "c"], 60).tolist()
    pred = [g if rng.random() < 0.5 else str(rng.choice(["a", "b", "c"])) for g in gold]
    got = row(table(frame(rows(BASE_MODEL, pred, gold))), BASE_MODEL)
    assert got["value"] == pytest.approx(matthews_corrcoef(gold, pred), rel=1e-12)


def test_example_order_does_not_matter():
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = rows(BASE_MODEL, [PRED[i] for i in order], [GOLD[i] for i in order], ids=order)
    in_order = rows(BASE_MODEL, PRED, GOLD)
    assert row(table(frame(shuffled)), BASE_MODEL)["value"] == row(table(frame(in_order)), BASE_MODEL)["value"]


# --- the interval ------------------------------------------------------------------------------


def test_interval_is_the_percentile_bootstrap_of_the_mcc_over_resampled_examples():
    pred, gold = labels(50, 0.6, seed=1)
    got = row(table(frame(rows(BASE_MODEL, pred, gold)), resamples=300), BASE_MODEL)
    # Reference: the index matrix the mean path draws for this row's seed, sklearn's MCC of each row of it.
    idx = np.random.default_rng(row_seed(0, BASE_MODEL, "toy_cola", "default", "mcc")).integers(0, 50, (300, 50))
    p, g = np.array(pred), np.array(gold)
    stats = [matthews_corrcoef(g[i], p[i]) for i in idx]
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])), rel=1e-9)


def test_interval_contains_the_value_and_narrows_with_more_examples():
    widths = []
    for n in (40, 400):
        pred, gold = labels(n, 0.6, seed=2)
        got = row(table(frame(rows(BASE_MODEL, pred, gold)), resamples=500), BASE_MODEL)
        assert got["ci_low"] < got["value"] < got["ci_high"]
        widths.append(got["ci_high"] - got["ci_low"])
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(10) expected


def test_bootstrap_is_deterministic_per_seed():
    pred, gold = labels(60, 0.5, seed=4)
    df = frame(rows(BASE_MODEL, pred, gold))
    first, again, other = table(df, seed=0), table(df, seed=0), table(df, seed=1)
    pd.testing.assert_frame_equal(first, again)
    assert (first["ci_low"].iloc[0], first["ci_high"].iloc[0]) != (other["ci_low"].iloc[0], other["ci_high"].iloc[0])
    assert first["value"].iloc[0] == other["value"].iloc[0]


def test_single_and_constant_examples():
    one = row(table(frame(rows(BASE_MODEL, ["acceptable"], ["acceptable"]))), BASE_MODEL)
    assert (one["value"], one["ci_low"], one["ci_high"], one["n"]) == (0.0, 0.0, 0.0, 1)  # denominator 0
    same = row(table(frame(rows(BASE_MODEL, ["acceptable"] * 5, GOLD[:5]))), BASE_MODEL)
    assert (same["value"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)


def test_resampled_ci_of_the_mean_is_percentile_ci():
    scores = np.random.default_rng(5).random(37)
    got = resampled_ci(lambda idx: scores[idx].mean(), scores.size, 250, 0.9, seed=11)
    assert got == pytest.approx(percentile_ci(scores, 250, 0.9, seed=11), rel=1e-12)
    assert np.isnan(resampled_ci(lambda idx: 1.0, 0, 250, 0.9, seed=11)).all()
    with pytest.raises(ValueError, match="resamples"):
        resampled_ci(lambda idx: 1.0, 3, 0, 0.9, seed=11)


# --- the paired change -------------------------------------------------------------------------


def test_paired_change_resamples_the_same_examples_for_both_models():
    base_pred, gold = labels(40, 0.3, seed=6)
    ft_pred, _ = labels(40, 0.7, seed=6)  # same gold (same generator state for it), better predictions
    perf = table(frame(rows(BASE_MODEL, base_pred, gold), rows(FT_MODEL, ft_pred, gold)), resamples=300)
    got = row(perf, FT_MODEL)
    idx = np.random.default_rng(row_seed(0, FT_MODEL, "toy_cola", "default", "mcc", "paired")).integers(
        0, 40, (300, 40)
    )
    p, b, g = np.array(ft_pred), np.array(base_pred), np.array(gold)
    diffs = [matthews_corrcoef(g[i], p[i]) - matthews_corrcoef(g[i], b[i]) for i in idx]
    expected = tuple(np.percentile(diffs, [2.5, 97.5]))
    assert (got["diff_ci_low"], got["diff_ci_high"]) == pytest.approx(expected, rel=1e-9)
    change = got["value"] - row(perf, BASE_MODEL)["value"]
    assert got["diff_ci_low"] <= change <= got["diff_ci_high"]


def test_an_unchanged_model_has_a_zero_width_change_interval():
    # Only a paired bootstrap gives 0: resampling each model alone would spread the difference.
    pred, gold = labels(40, 0.5, seed=7)
    got = row(table(frame(rows(BASE_MODEL, pred, gold), rows(FT_MODEL, pred, gold))), FT_MODEL)
    assert (got["diff_ci_low"], got["diff_ci_high"]) == (0.0, 0.0)
    assert got["ci_low"] < got["ci_high"]


def test_paired_change_uses_only_shared_examples_matched_by_id():
    base_pred, gold = labels(30, 0.4, seed=8)
    ft_pred, _ = labels(30, 0.8, seed=8)
    # The fine-tuned rows come in another order and lack the last five examples.
    order = list(range(25))[::-1]
    ft = rows(FT_MODEL, [ft_pred[i] for i in order], [gold[i] for i in order], ids=order)
    got = row(table(frame(rows(BASE_MODEL, base_pred, gold), ft), resamples=200), FT_MODEL)
    idx = np.random.default_rng(row_seed(0, FT_MODEL, "toy_cola", "default", "mcc", "paired")).integers(
        0, 25, (200, 25)
    )
    p, b, g = (np.array([x[i] for i in order]) for x in (ft_pred, base_pred, gold))
    diffs = [matthews_corrcoef(g[i], p[i]) - matthews_corrcoef(g[i], b[i]) for i in idx]
    assert (got["diff_ci_low"], got["diff_ci_high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))


# --- the mean path -----------------------------------------------------------------------------


def test_mean_rows_are_unchanged_by_corpus_rows_beside_them():
    pred, gold = labels(20, 0.5, seed=9)
    acc = [*rows(BASE_MODEL, pred, gold, metric="accuracy"), *rows(FT_MODEL, gold, gold, metric="accuracy")]
    alone = table(frame(acc))
    mixed = table(frame(acc, rows(BASE_MODEL, pred, gold), rows(FT_MODEL, gold, gold)))
    pd.testing.assert_frame_equal(mixed[mixed["metric"] == "accuracy"].reset_index(drop=True), alone)
    base = row(alone, BASE_MODEL, "accuracy")
    scores = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=np.float64)
    assert base["value"] == scores.mean()
    seed = row_seed(0, BASE_MODEL, "toy_cola", "default", "accuracy")
    assert (base["ci_low"], base["ci_high"]) == percentile_ci(scores, 200, 0.95, seed)
    # The label columns are needed only where a corpus metric is.
    assert table(frame(acc).drop(columns=["prediction", "gold"]))["value"].tolist() == alone["value"].tolist()


def test_corpus_rows_need_their_labels():
    df = frame(rows(BASE_MODEL, PRED, GOLD))
    with pytest.raises(ValueError, match=r"missing column\(s\) gold, required for metric\(s\) mcc"):
        table(df.drop(columns="gold"))
    bad = df.astype({"prediction": object})
    bad.loc[2, "prediction"] = None
    with pytest.raises(ValueError, match=r"'prediction' has 1 null value\(s\) in rows of metric\(s\) mcc"):
        table(bad)
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        table(df.assign(metric="bleu"))
