"""Tests of ptft.aggregate: bootstrap, performance table, change after fine-tuning, figures."""

from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ptft.aggregate import bootstrap
from ptft.aggregate.bootstrap import percentile_ci
from ptft.aggregate.change import change_after_finetuning, change_slope, paired_change
from ptft.aggregate.figures import (
    plot_average_change,
    plot_base_vs_finetuned,
    plot_base_vs_finetuned_grid,
    plot_format_sensitivity,
    plot_learning_dynamics,
)
from ptft.aggregate.performance import (
    PERFORMANCE_COLUMNS,
    performance_table,
    read_predictions,
    row_seed,
    validate_performance,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MANIFEST = {
    "checkpoints": [
        {"name": "step20", "step": 20, "tokens": 81920, "path": "x/step20"},
        {"name": "step40", "step": 40, "tokens": 163840, "path": "x/step40"},
    ]
}
EVAL_SETS = {"toy_nli": ("nli", "classification", "accuracy"), "toy_sum": ("summary", "generation", "rougeL")}

# (checkpoint, fine-tuned?, eval_set, format) -> per-example scores; means are easy to check by hand.
SCORES = {
    ("step20", False, "toy_nli", "default"): [1, 0, 0, 1],  # 0.5
    ("step20", False, "toy_nli", "instruct"): [0, 0, 0, 1],  # 0.25
    ("step20", False, "toy_sum", "default"): [0.25, 0.5],  # 0.375
    ("step40", False, "toy_nli", "default"): [1, 1, 0, 1],  # 0.75
    ("step40", False, "toy_nli", "instruct"): [1, 0, 0, 1],  # 0.5
    ("step40", False, "toy_sum", "default"): [0.0, 0.0],  # 0.0: zero base
    ("step20", True, "toy_nli", "default"): [1, 1, 1, 0],  # 0.75
    ("step20", True, "toy_nli", "instruct"): [1, 1, 0, 0],  # 0.5
    ("step20", True, "toy_sum", "default"): [0.125, 0.125],  # 0.125
    ("step40", True, "toy_nli", "default"): [1, 1, 1, 1],  # 1.0
    ("step40", True, "toy_nli", "instruct"): [1, 1, 1, 0],  # 0.75
    ("step40", True, "toy_sum", "default"): [0.5, 0.25],  # 0.375
}


def make_predictions(scores: dict = SCORES) -> pd.DataFrame:
    rows = []
    for (checkpoint, finetuned, eval_set, fmt), values in scores.items():
        eval_task, kind, metric = EVAL_SETS[eval_set]
        if finetuned:
            model = f"ft/{checkpoint}/toy_nli/full/lr0.001/seed0"
            train_task, method, lr, seed, shots = "toy_nli", "full", 0.001, 0, 0
            relation = "in-domain" if eval_set == "toy_nli" else "cross-task"
        else:
            model, train_task, method, lr, seed, shots = f"base/{checkpoint}", "none", "base", None, None, 4
            relation = "pretraining"
        for i, score in enumerate(values):
            rows.append(
                {
                    "model": model,
                    "checkpoint": checkpoint,
                    "train_task": train_task,
                    "method": method,
                    "lr": lr,
                    "seed": seed,
                    "shots": shots,
                    "eval_set": eval_set,
                    "eval_task": eval_task,
                    "eval_kind": kind,
                    "format": fmt,
                    "relation": relation,
                    "example_id": i,
                    "prompt_hash": f"h{i}",
                    "prediction": "p",
                    "gold": "g",
                    "metric": metric,
                    "score": float(score),
                    "label_logprobs": [-0.1, -2.0] if kind == "classification" else [],
                }
            )
    df = pd.DataFrame(rows)
    df["lr"] = df["lr"].astype("float64")
    df["seed"] = df["seed"].astype("Int64")
    return df


@pytest.fixture(scope="module")
def perf() -> pd.DataFrame:
    return performance_table(make_predictions(), MANIFEST, "toy", resamples=200, confidence=0.95, seed=0)


def perf_rows(rows: list[tuple]) -> pd.DataFrame:
    """A minimal performance table from (checkpoint, step, train_task, method, eval_set, relation, value)."""
    out = []
    for checkpoint, step, task, method, eval_set, relation, value in rows:
        out.append(
            {
                "study": "s",
                "checkpoint": checkpoint,
                "step": step,
                "tokens": None,
                "train_task": task,
                "method": method,
                "lr": None,
                "seed": None,
                "eval_set": eval_set,
                "eval_task": "nli",
                "format": "default",
                "shots": 0,
                "relation": relation,
                "metric": "accuracy",
                "value": value,
                "ci_low": value - 0.05,
                "ci_high": value + 0.05,
                "n": 10,
            }
        )
    df = pd.DataFrame(out)
    df["step"] = df["step"].astype("Int64")
    return df


# --- bootstrap ---------------------------------------------------------------------------------


def reference_ci(scores, resamples, confidence, seed, block):
    """Slow reference: same index draws, means and linear percentiles computed by hand."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    means = []
    for start in range(0, resamples, block):
        for row in rng.integers(0, n, size=(min(block, resamples - start), n)):
            means.append(sum(float(scores[i]) for i in row) / n)
    means.sort()

    def linear(q):
        pos = q * (len(means) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (means[hi] - means[lo]) * (pos - lo)

    return linear((1 - confidence) / 2), linear((1 + confidence) / 2)


def test_bootstrap_matches_reference_loop():
    scores = np.array([0.0, 0.25, 1.0, 0.5, 0.75])
    got = percentile_ci(scores, resamples=301, confidence=0.9, seed=7)
    want = reference_ci(scores, 301, 0.9, 7, block=301)
    assert got == pytest.approx(want, abs=1e-12)


def test_bootstrap_chunked_draw_matches_reference(monkeypatch):
    scores = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    monkeypatch.setattr(bootstrap, "MAX_DRAW_ELEMENTS", 7 * scores.size)  # blocks of 7 resamples
    got = percentile_ci(scores, resamples=50, confidence=0.95, seed=3)
    assert got == pytest.approx(reference_ci(scores, 50, 0.95, 3, block=7), abs=1e-12)


def test_bootstrap_contains_mean_and_is_deterministic():
    scores = np.random.default_rng(0).random(200)
    low, high = percentile_ci(scores, 1000, 0.95, seed=1)
    assert low < scores.mean() < high
    assert percentile_ci(scores, 1000, 0.95, seed=1) == (low, high)
    assert percentile_ci(scores, 1000, 0.95, seed=2) != (low, high)


def test_bootstrap_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, 50).astype(float)
    large = rng.integers(0, 2, 2000).astype(float)
    width = [high - low for low, high in (percentile_ci(s, 1000, 0.95, seed=0) for s in (small, large))]
    assert width[1] < width[0] / 3  # sqrt(2000 / 50) ≈ 6.3


def test_bootstrap_edge_cases():
    assert all(math.isnan(v) for v in percentile_ci(np.array([]), 100, 0.95, seed=0))
    assert percentile_ci(np.array([0.3]), 100, 0.95, seed=0) == (0.3, 0.3)
    assert percentile_ci(np.array([0.5, 0.5, 0.5]), 100, 0.95, seed=0) == (0.5, 0.5)


# --- performance table -------------------------------------------------------------------------


def test_performance_table_values(perf):
    assert list(perf.columns) == list(PERFORMANCE_COLUMNS)
    validate_performance(perf)
    assert len(perf) == len(SCORES)
    for (checkpoint, finetuned, eval_set, fmt), values in SCORES.items():
        row = perf[
            (perf["checkpoint"] == checkpoint)
            & (perf["method"] == ("full" if finetuned else "base"))
            & (perf["eval_set"] == eval_set)
            & (perf["format"] == fmt)
        ]
        assert len(row) == 1
        row = row.iloc[0]
        assert row["value"] == pytest.approx(np.mean(values))
        assert row["n"] == len(values)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
        assert row["step"] == {"step20": 20, "step40": 40}[checkpoint]
        assert row["tokens"] == {"step20": 81920, "step40": 163840}[checkpoint]
        assert row["metric"] == EVAL_SETS[eval_set][2]
        assert row["study"] == "toy"
    base = perf[perf["method"] == "base"]
    assert base["lr"].isna().all() and base["seed"].isna().all() and (base["shots"] == 4).all()
    assert (perf.loc[perf["method"] == "full", "lr"] == 0.001).all()


def test_paired_interval_of_the_change_over_base(perf):
    ft = perf[perf["method"] == "full"]
    assert ft["diff_ci_low"].notna().all() and perf.loc[perf["method"] == "base", "diff_ci_low"].isna().all()
    for (checkpoint, finetuned, eval_set, fmt), values in SCORES.items():
        if not finetuned:
            continue
        row = ft[(ft["checkpoint"] == checkpoint) & (ft["eval_set"] == eval_set) & (ft["format"] == fmt)].iloc[0]
        diffs = np.array(values, float) - np.array(SCORES[(checkpoint, False, eval_set, fmt)], float)
        key = (f"ft/{checkpoint}/toy_nli/full/lr0.001/seed0", eval_set, fmt, row["metric"])
        expected = percentile_ci(diffs, 200, 0.95, row_seed(0, *key, "paired"))
        assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(expected)
        assert row["diff_ci_low"] <= diffs.mean() <= row["diff_ci_high"]
    # Resampling pairs, not each model alone: a constant shift has a zero-width interval.
    shifted = {k: ([v + 0.5 for v in SCORES[(k[0], False, *k[2:])]] if k[1] else v) for k, v in SCORES.items()}
    table = performance_table(make_predictions(shifted), MANIFEST, "toy", 200, 0.95, seed=0)
    changed = table[table["method"] == "full"]
    assert np.allclose(changed["diff_ci_low"], 0.5) and np.allclose(changed["diff_ci_high"], 0.5)
    # Without a base row for the checkpoint, there is no interval.
    alone = {k: v for k, v in SCORES.items() if k[1] or k[0] != "step40"}
    table = performance_table(make_predictions(alone), MANIFEST, "toy", 200, 0.95, seed=0)
    assert table.loc[table["checkpoint"] == "step40", "diff_ci_low"].isna().all()


def test_performance_table_dtypes_and_order(perf):
    assert perf["lr"].dtype == "float64" and perf["value"].dtype == "float64"
    assert perf["seed"].dtype == "Int64" and perf["step"].dtype == "Int64" and perf["tokens"].dtype == "Int64"
    assert perf["shots"].dtype == "int64" and perf["n"].dtype == "int64"
    assert perf["checkpoint"].dtype == "str" and perf["relation"].dtype == "str"
    keys = list(zip(perf["method"], perf["step"], perf["eval_set"], perf["format"], strict=True))
    assert keys == sorted(keys)
    assert keys[0] == ("base", 20, "toy_nli", "default")


def test_performance_rows_are_reproducible_alone(perf):
    preds = make_predictions()
    alone = performance_table(preds[preds["model"] == "base/step40"], MANIFEST, "toy", 200, 0.95, seed=0)
    full = perf[perf["checkpoint"].eq("step40") & perf["method"].eq("base")].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, full)


def test_performance_table_unknown_checkpoint_has_null_step():
    table = performance_table(make_predictions(), {"checkpoints": MANIFEST["checkpoints"][:1]}, "toy", 50, 0.95, 0)
    assert table.loc[table["checkpoint"] == "step40", "step"].isna().all()
    assert table.loc[table["checkpoint"] == "step20", "step"].eq(20).all()


def test_performance_table_errors():
    preds = make_predictions()
    with pytest.raises(ValueError, match="relation"):
        performance_table(preds.drop(columns="relation"), MANIFEST, "toy", 50, 0.95, 0)
    with pytest.raises(ValueError, match="example_id"):
        performance_table(pd.concat([preds, preds.iloc[:1]]), MANIFEST, "toy", 50, 0.95, 0)
    bad = preds.copy()
    bad.loc[0, "relation"] = "ood"
    with pytest.raises(ValueError, match="relation"):
        performance_table(bad, MANIFEST, "toy", 50, 0.95, 0)


def test_validate_performance_rejects_bad_values(perf):
    bad = perf.copy()
    bad.loc[0, "format"] = "chat"
    with pytest.raises(ValueError, match="'format' has value 'chat'"):
        validate_performance(bad)
    with pytest.raises(ValueError, match="columns"):
        validate_performance(perf[list(reversed(PERFORMANCE_COLUMNS))])


def test_read_predictions_concatenates(tmp_path):
    preds = make_predictions()
    base, ft = preds[preds["method"] == "base"], preds[preds["method"] != "base"]
    base.to_parquet(tmp_path / "a.parquet", index=False)
    ft.to_parquet(tmp_path / "b.parquet", index=False)
    back = read_predictions([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert len(back) == len(preds)
    assert back["seed"].dtype == "Int64"
    table = performance_table(back, MANIFEST, "toy", 50, 0.95, 0)
    assert table["value"].tolist() == performance_table(preds, MANIFEST, "toy", 50, 0.95, 0)["value"].tolist()


# --- change after fine-tuning ------------------------------------------------------------------


def test_change_after_finetuning_from_predictions(perf):
    change = change_after_finetuning(perf, "default")
    assert list(change.columns) == ["checkpoint", "step", "relation", "learned", "avg_diff", "avg_ratio_pct", "n_pairs"]
    assert change["learned"].isna().all()  # no learned table given: unclassified
    got = {(r.checkpoint, r.relation): (r.avg_diff, r.avg_ratio_pct, r.n_pairs) for r in change.itertuples()}
    assert got[("step20", "in-domain")] == pytest.approx((0.25, 50.0, 1))  # 0.75 vs 0.5
    assert got[("step20", "cross-task")] == pytest.approx((-0.25, -200 / 3, 1))  # 0.125 vs 0.375
    assert got[("step40", "in-domain")] == pytest.approx((0.25, 100 / 3, 1))  # 1.0 vs 0.75
    diff, ratio, n = got[("step40", "cross-task")]  # 0.375 vs 0.0: ratio undefined
    assert diff == pytest.approx(0.375) and math.isnan(ratio) and n == 1
    instruct = change_after_finetuning(perf, "instruct")
    assert instruct["avg_diff"].tolist() == pytest.approx([0.25, 0.25])
    assert instruct["avg_ratio_pct"].tolist() == pytest.approx([100.0, 50.0])


def test_change_averages_pairs_and_skips_zero_base():
    perf = perf_rows(
        [
            ("c1", 1000, "none", "base", "a", "pretraining", 0.5),
            ("c1", 1000, "none", "base", "b", "pretraining", 0.0),
            ("c1", 1000, "a", "full", "a", "in-domain", 0.75),
            ("c1", 1000, "b", "full", "a", "ood", 0.25),
            ("c1", 1000, "a", "full", "b", "ood", 0.5),
            ("c2", 2000, "a", "full", "a", "in-domain", 0.9),  # no base row for c2: dropped
        ]
    )
    pairs = paired_change(perf)
    assert len(pairs) == 3
    change = change_after_finetuning(perf).set_index("relation")
    assert change.loc["in-domain", "avg_diff"] == pytest.approx(0.25)
    assert change.loc["in-domain", "avg_ratio_pct"] == pytest.approx(50.0)
    # ood pairs: (0.25 − 0.5) → −50 %, and (0.5 − 0.0) → ratio NaN, left out of the ratio mean only.
    assert change.loc["ood", "avg_diff"] == pytest.approx(0.125)
    assert change.loc["ood", "avg_ratio_pct"] == pytest.approx(-50.0)
    assert change.loc["ood", "n_pairs"] == 2


def test_change_split_by_learned_during_pretraining(perf):
    learned = pd.DataFrame({"eval_set": ["toy_nli", "toy_sum"], "metric": ["accuracy", "rougeL"],
                            "learned": [True, False]})  # fmt: skip
    change = change_after_finetuning(perf, "default", learned)
    got = {(r.checkpoint, r.relation, r.learned): (r.avg_diff, r.n_pairs) for r in change.itertuples()}
    # toy_nli (in-domain) is the learned set, toy_sum (cross-task) the unlearned one.
    assert got == {
        ("step20", "in-domain", True): pytest.approx((0.25, 1)),
        ("step20", "cross-task", False): pytest.approx((-0.25, 1)),
        ("step40", "in-domain", True): pytest.approx((0.25, 1)),
        ("step40", "cross-task", False): pytest.approx((0.375, 1)),
    }
    slope = change_slope(change)
    slope = slope[slope["kind"] == "fit"]
    assert slope[["relation", "learned"]].values.tolist() == [["cross-task", False], ["in-domain", True]]
    # cross-task: -0.25 at step 20, 0.375 at step 40: +0.625 per 20 steps = 3125 per 100k steps.
    assert slope.set_index("relation").loc["cross-task", "slope_avg_diff"] == pytest.approx(0.625 / 20 * 1e5)
    # An eval set the learned table does not classify stays null rather than joining a side.
    partial = change_after_finetuning(perf, "default", learned.iloc[:1])
    assert partial.set_index("relation").loc["cross-task", "learned"].isna().all()


def test_change_slope_linear():
    steps = [0, 100_000, 300_000, 750_000]
    change = pd.DataFrame(
        {
            "checkpoint": [f"s{s}" for s in steps] + ["s0"],
            "step": pd.array(steps + [0], dtype="Int64"),
            "relation": ["in-domain"] * 4 + ["ood"],
            "avg_diff": [0.1 + 0.02 * s / 1e5 for s in steps] + [0.3],
            "avg_ratio_pct": [5.0 - 1.5 * s / 1e5 for s in steps] + [1.0],
            "n_pairs": [1] * 5,
        }
    )
    table = change_slope(change)
    slope = table[table["kind"] == "fit"].set_index("relation")
    assert slope.loc["in-domain", "slope_avg_diff"] == pytest.approx(0.02)
    assert slope.loc["in-domain", "slope_avg_ratio_pct"] == pytest.approx(-1.5)
    assert slope.loc["in-domain", "n_steps"] == 4
    assert math.isnan(slope.loc["ood", "slope_avg_diff"])
    # The paper's column: per checkpoint, the change from the previous one per 100k steps (0 first).
    consecutive = table[(table["kind"] == "consecutive") & (table["relation"] == "in-domain")]
    assert consecutive["checkpoint"].tolist() == [f"s{s}" for s in steps]
    assert consecutive["slope_avg_diff"].to_numpy() == pytest.approx([0.0, 0.02, 0.02, 0.02])
    assert consecutive["slope_avg_ratio_pct"].to_numpy() == pytest.approx([0.0, -1.5, -1.5, -1.5])


# --- figures -----------------------------------------------------------------------------------


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no temp left


def test_figures_write_png(perf, tmp_path):
    plot_base_vs_finetuned(perf, "toy_nli", "default", tmp_path / "single.png")
    assert_png(tmp_path / "single.png")
    plot_base_vs_finetuned_grid(perf, ["toy_nli", "toy_sum"], "default", tmp_path / "grid.png")
    assert_png(tmp_path / "grid.png")
    plot_average_change(change_after_finetuning(perf), tmp_path / "change.png")
    assert_png(tmp_path / "change.png")
    assert plt.get_fignums() == []


def test_figures_svg_format_relation_and_learning_dynamics(perf, tmp_path):
    plot_base_vs_finetuned_grid(perf, ["toy_sum"], "default", tmp_path / "cross_task.png", relation="cross-task")
    plot_format_sensitivity(perf, ["toy_nli", "toy_sum"], tmp_path / "formats.png")
    steps = np.arange(0, 50, 25)
    probes = pd.DataFrame([(panel, s, e, t, -5.0 + s / 25 * (1 if t == "gold" else -1), 2)
                           for panel in ("step20", "step40") for s in steps for e in range(3)
                           for t in ("gold", "other_label")],
                          columns=["panel", "step", "example", "response_type", "logp", "n_tokens"])  # fmt: skip
    plot_learning_dynamics(probes, "Learning dynamics: toy_nli (full)", tmp_path / "dynamics.png")
    for name in ("cross_task", "formats", "dynamics"):
        assert_png(tmp_path / f"{name}.png")
        svg = (tmp_path / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    # Text stays text in the SVG (editable in a paper), and every curve is labelled in the legend.
    svg = (tmp_path / "formats.svg").read_text()
    for label in ("toy_nli · accuracy", "default, base", "instruct, fine-tuned"):
        assert label in svg
    assert "toy_sum" not in svg  # scored in one format only: no panel
    texts = set(re.findall(r">([\w ]+)</text>", (tmp_path / "dynamics.svg").read_text()))
    assert {"gold", "other_label", "step40"} <= texts
    with pytest.raises(ValueError, match="more than one format"):
        plot_format_sensitivity(perf, ["toy_sum"], tmp_path / "none.png")
    assert plt.get_fignums() == []


def test_grid_legend_names_each_task_and_method_once(tmp_path):
    # Panel a has two methods of task_a, panel b one method of task_b: task_b's line must still
    # carry its method, or the shared legend would list "task_b" beside "task_a (full)".
    rows = [(c, s, "none", "base", e, "pretraining", 0.5) for c, s in (("s1", 1), ("s2", 2)) for e in ("a", "b")]
    rows += [(c, s, "task_a", m, "a", "in-domain", 0.6) for c, s in (("s1", 1), ("s2", 2)) for m in ("full", "lora")]
    rows += [(c, s, "task_b", "full", "b", "in-domain", 0.7) for c, s in (("s1", 1), ("s2", 2))]
    plot_base_vs_finetuned_grid(perf_rows(rows), ["a", "b"], "default", tmp_path / "grid.png")
    texts = re.findall(r">([\w ()]+)</text>", (tmp_path / "grid.svg").read_text())
    legend = [t for t in texts if t.startswith(("task_", "base"))]
    assert legend == ["base", "task_a (full)", "task_a (lora)", "task_b (full)"]
    assert plt.get_fignums() == []


def test_figure_without_rows_raises(perf, tmp_path):
    with pytest.raises(ValueError, match="toy_nli"):
        plot_base_vs_finetuned(perf, "toy_nli", "io", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    assert plt.get_fignums() == []
