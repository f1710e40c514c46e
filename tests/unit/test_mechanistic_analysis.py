"""The table builders of the mechanistic analysis (ptft.analysis.mechanistic) on hand-made row frames, no model.

The per-model rows are written here as the per-model jobs write them (the run columns, then one row per test example);
values and intervals are recomputed independently with ``ptft.aggregate.bootstrap.percentile_ci`` and the settings'
bootstrap block.
"""

import io

import numpy as np
import pandas as pd
import pytest

from ptft.aggregate.bootstrap import percentile_ci
from ptft.aggregate.performance import _DTYPES as PERFORMANCE_DTYPES
from ptft.analysis.mechanistic import (
    PROBE_COLUMNS,
    PRUNING_COLUMNS,
    REVERSE_COLUMNS,
    chance_accuracy,
    layer_probes,
    pruning,
    reverse_finetuning,
)

SETTINGS = {"bootstrap": {"resamples": 200, "confidence": 0.9, "seed": 7}}
BASE = {"model": "base/step1000", "study": "s", "checkpoint": "step1000", "step": 1000, "tokens": 33000,
        "train_task": "none", "method": "base", "lr": None, "seed": None, "train_size": None, "parent": None,
        "ft_step": 0}  # fmt: skip
TUNED = {"model": "ft/step2000/count_b/full/lr0.0003/seed1", "study": "s", "checkpoint": "step2000", "step": 2000,
         "tokens": 66000, "train_task": "count_b", "method": "full", "lr": 3e-4, "seed": 1, "train_size": None,
         "parent": None, "ft_step": 300}  # fmt: skip


def ci(scores) -> tuple[float, float]:
    boot = SETTINGS["bootstrap"]
    return percentile_ci(np.asarray(scores, dtype=np.float64), boot["resamples"], boot["confidence"], boot["seed"])


def per_example(meta: dict, n: int, **columns) -> pd.DataFrame:
    return pd.DataFrame({**{k: [v] * n for k, v in meta.items()}, **columns})


# --- layer probes -------------------------------------------------------------------------------------------------


def probe_rows() -> tuple[pd.DataFrame, dict]:
    """Two models x two targets x three layers, 12 test examples each, with the correct flags kept for checking."""
    rng = np.random.default_rng(0)
    chance = {"pretraining": 0.25, "finetuning": 0.5}
    frames, truth = [], {}
    for meta in (BASE, TUNED):
        for target in ("pretraining", "finetuning"):
            for layer in (0, 1, 2):
                correct = rng.random(12) < 0.3 + 0.3 * layer
                truth[meta["model"], target, layer] = correct
                frames.append(per_example(meta, 12, dataset="count_a", target=target, layer=layer,
                                          example_id=np.arange(12), correct=correct,
                                          chance=chance[target]))  # fmt: skip
    return pd.concat(frames, ignore_index=True), truth


def test_layer_probes_one_row_per_model_target_and_layer():
    rows, truth = probe_rows()
    table = layer_probes(rows, SETTINGS)
    assert list(table.columns) == PROBE_COLUMNS
    assert len(table) == 12
    # Ordered by train task (count_b before none), then target and layer.
    order = list(zip(table["train_task"], table["target"], table["layer"], strict=True))
    expected = [(task, target, layer) for task in ("count_b", "none") for target in ("finetuning", "pretraining")
                for layer in (0, 1, 2)]  # fmt: skip
    assert order == expected
    for row in table.itertuples(index=False):
        model = BASE if row.train_task == "none" else TUNED
        correct = truth[model["model"], row.target, row.layer]
        assert row.value == pytest.approx(correct.mean())
        assert row.n == 12
        assert (row.ci_low, row.ci_high) == ci(correct)
        assert row.chance == {"pretraining": 0.25, "finetuning": 0.5}[row.target]
        assert row.dataset == "count_a"
        assert (row.checkpoint, row.step, row.tokens, row.method) == (model["checkpoint"], model["step"],
                                                                      model["tokens"], model["method"])  # fmt: skip
    base = table[table["train_task"] == "none"]
    assert base["lr"].isna().all() and base["seed"].isna().all()
    tuned = table[table["train_task"] == "count_b"]
    assert set(tuned["lr"]) == {3e-4} and set(tuned["seed"]) == {1}
    assert str(table["layer"].dtype) == "int64" and str(table["n"].dtype) == "Int64"


def test_layer_probes_default_bootstrap_and_no_chance_column():
    rows, truth = probe_rows()
    table = layer_probes(rows.drop(columns="chance"), {})
    row = table[(table["train_task"] == "none") & (table["target"] == "pretraining") & (table["layer"] == 2)].iloc[0]
    correct = truth[BASE["model"], "pretraining", 2].astype(np.float64)
    # Without a bootstrap block: 3000 resamples, 95 %, seed 0 (the schema's defaults).
    assert (row["ci_low"], row["ci_high"]) == percentile_ci(correct, 3000, 0.95, 0)
    assert table["chance"].isna().all()


# --- chance --------------------------------------------------------------------------------------------------------


def test_chance_is_the_share_of_the_most_frequent_class_ignoring_missing_answers():
    test = pd.DataFrame({
        "answer_a": [3, 3, 3, 1, 2, -1, -1, 0],  # 6 answered, class 3 three times
        "answer_b": [5, 5, 4, 4, 4, 4, 4, 4],  # 8 answered, class 4 six times
        "answer_c": [-1, -1, -1, -1, -1, -1, -1, -1],  # none answered
    })  # fmt: skip
    shares = chance_accuracy(test, {"pretraining": "answer_a", "finetuning": "answer_b", "none": "answer_c"})
    assert shares["pretraining"] == pytest.approx(3 / 6)
    assert shares["finetuning"] == pytest.approx(6 / 8)
    assert np.isnan(shares["none"])
    assert list(shares) == ["pretraining", "finetuning", "none"]


# --- pruning -------------------------------------------------------------------------------------------------------


def pruning_rows() -> tuple[pd.DataFrame, dict]:
    """One fine-tuned model: two rankings x K in (0, 5) x two eval sets x one metric, 10 examples each."""
    rng = np.random.default_rng(1)
    frames, truth = [], {}
    for ranking in ("magnitude", "decrease"):
        for k in (5, 0):
            shift = 0 if ranking == "magnitude" else 7  # the rankings zero different neurons
            neurons = " ".join(f"{i % 3}:{i + shift}" for i in range(k))
            for eval_set in ("count_a", "count_b"):
                scores = (rng.random(10) < 0.5).astype(float)
                truth[ranking, k, eval_set] = (scores, neurons)
                frames.append(per_example(TUNED, 10, ranking=ranking, k=k, eval_set=eval_set, format="default",
                                          metric="accuracy", example_id=np.arange(10), score=scores,
                                          neurons=neurons))  # fmt: skip
    return pd.concat(frames, ignore_index=True), truth


def test_pruning_one_row_per_ranking_k_and_eval_set():
    rows, truth = pruning_rows()
    table = pruning(rows, SETTINGS)
    assert list(table.columns) == PRUNING_COLUMNS
    assert len(table) == 8
    order = list(zip(table["ranking"], table["eval_set"], table["k"], strict=True))
    assert order == [(r, e, k) for r in ("decrease", "magnitude") for e in ("count_a", "count_b") for k in (0, 5)]
    for row in table.itertuples(index=False):
        scores, neurons = truth[row.ranking, row.k, row.eval_set]
        assert row.value == pytest.approx(scores.mean())
        assert row.n == 10
        assert (row.ci_low, row.ci_high) == ci(scores)
        assert row.neurons == neurons
        assert (row.format, row.metric, row.checkpoint, row.seed, row.lr) == ("default", "accuracy", "step2000", 1,
                                                                              3e-4)  # fmt: skip
    assert str(table["k"].dtype) == "Int64"


def test_pruning_keeps_metrics_and_formats_apart():
    rows, _ = pruning_rows()
    other = rows[(rows["ranking"] == "decrease") & (rows["k"] == 0) & (rows["eval_set"] == "count_a")]
    other = other.assign(metric="loss", score=np.linspace(0.0, 0.9, len(other)))
    table = pruning(pd.concat([rows, other], ignore_index=True), SETTINGS)
    assert len(table) == 9
    loss = table[table["metric"] == "loss"]
    assert len(loss) == 1 and loss["value"].iloc[0] == pytest.approx(0.45)
    accuracy = table[(table["metric"] == "accuracy") & (table["ranking"] == "decrease") & (table["k"] == 0)
                     & (table["eval_set"] == "count_a")]  # fmt: skip
    assert accuracy["n"].tolist() == [10]


# --- reverse fine-tuning -------------------------------------------------------------------------------------------

EVAL_SET = "toy_nli"  # a built-in dataset whose primary metric is accuracy
PARENT = "step2000/count_b/full/lr0.0003/seed{seed}"


def trajectory_row(checkpoint, task, seed, parent, ft_step, value, metric="accuracy", eval_set=EVAL_SET) -> dict:
    return {"study": "s", "checkpoint": checkpoint, "step": 2000, "tokens": 66000, "train_task": task,
            "method": "full", "lr": 1e-4, "seed": seed, "train_size": None, "parent": parent, "ft_step": ft_step,
            "eval_set": eval_set, "eval_task": "nli", "format": "default", "metric": metric, "value": value,
            "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 100, "relation": "in-domain", "shots": 0,
            "lr_selected": False}  # fmt: skip


# (checkpoint, task, parent?) -> per seed, the values at ft_step 0, 10, 20, 30
RUNS = {
    ("step2000", "count_a", True): {0: [0.2, 0.95, 0.85, 0.97], 1: [0.3, 0.6, 0.9, 0.4]},
    ("scratch", "count_a_scratch", False): {0: [0.1, 0.3, 0.5, 0.6], 1: [0.1, 0.2, 0.91, 0.95]},
}
STEPS = [0, 10, 20, 30]
# The first ft_step whose value reaches 0.9 (None: never).
REACHED = {("count_a", 0): 10, ("count_a", 1): 20, ("count_a_scratch", 0): None, ("count_a_scratch", 1): 20}


def trajectory() -> pd.DataFrame:
    rows = []
    for (checkpoint, task, has_parent), seeds in RUNS.items():
        for seed, values in seeds.items():
            parent = PARENT.format(seed=seed) if has_parent else None
            rows += [trajectory_row(checkpoint, task, seed, parent, s, v) for s, v in zip(STEPS, values, strict=True)]
    # Dropped: a run from a step checkpoint without a parent (neither role), another eval set, a secondary metric.
    rows += [trajectory_row("step2000", "count_b", 0, None, s, 0.99) for s in STEPS]
    rows += [trajectory_row("step2000", "count_a", 0, PARENT.format(seed=0), s, 0.99, eval_set="toy_paraphrase")
             for s in STEPS]  # fmt: skip
    rows += [trajectory_row("scratch", "count_a_scratch", 0, None, s, 0.99, metric="f1") for s in STEPS]
    frame = pd.DataFrame(rows)
    # As the trajectory table holds them (the performance table's dtypes), through a Parquet round trip.
    frame = frame.astype({k: v for k, v in PERFORMANCE_DTYPES.items() if k in frame})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return pd.read_parquet(buffer)


def test_reverse_finetuning_roles_and_steps_to_threshold():
    table = reverse_finetuning(trajectory(), SETTINGS, {"eval_set": EVAL_SET, "threshold": 0.9}, "scratch")
    assert list(table.columns) == REVERSE_COLUMNS
    assert len(table) == 16  # 2 roles x 2 seeds x 4 steps; nothing else
    assert set(table["eval_set"]) == {EVAL_SET} and set(table["metric"]) == {"accuracy"}
    assert (table["threshold"] == 0.9).all()
    roles = table.groupby("train_task")["role"].unique().map(list).to_dict()
    assert roles == {"count_a": ["reverse"], "count_a_scratch": ["baseline"]}
    assert table.loc[table["role"] == "reverse", "parent"].notna().all()
    assert table.loc[table["role"] == "baseline", "parent"].isna().all()
    assert set(table.loc[table["role"] == "baseline", "checkpoint"]) == {"scratch"}
    for (task, seed), group in table.groupby(["train_task", "seed"]):
        checkpoint = "step2000" if task == "count_a" else "scratch"
        assert group["ft_step"].tolist() == STEPS
        assert group["value"].tolist() == pytest.approx(RUNS[checkpoint, task, task == "count_a"][seed])
        steps = group["steps_to_threshold"]
        if REACHED[task, seed] is None:
            assert steps.isna().all()
        else:
            assert steps.tolist() == [REACHED[task, seed]] * 4
    assert str(table["steps_to_threshold"].dtype) == "Int64"
    # Intervals and n are the trajectory table's own (no new bootstrap).
    assert (table["ci_high"] - table["value"]).to_numpy() == pytest.approx(0.05)
    assert set(table["n"]) == {100}


def test_reverse_finetuning_threshold_and_baseline_name():
    rows = trajectory()
    higher = reverse_finetuning(rows, SETTINGS, {"eval_set": EVAL_SET, "threshold": 0.96}, "scratch")
    steps = higher.groupby(["train_task", "seed"])["steps_to_threshold"].first()
    assert steps[("count_a", 0)] == 30
    assert pd.isna(steps[("count_a", 1)]) and pd.isna(steps[("count_a_scratch", 0)])
    assert pd.isna(steps[("count_a_scratch", 1)])
    # Another baseline checkpoint name: the scratch runs are then neither reverse nor baseline.
    none = reverse_finetuning(rows, SETTINGS, {"eval_set": EVAL_SET, "threshold": 0.9}, "elsewhere")
    assert set(none["role"]) == {"reverse"} and len(none) == 8


def test_reverse_finetuning_on_object_columns_with_none():
    values = RUNS["scratch", "count_a_scratch", False][0]
    rows = pd.DataFrame([trajectory_row("scratch", "count_a_scratch", 0, None, s, v)
                         for s, v in zip(STEPS, values, strict=True)])  # fmt: skip
    table = reverse_finetuning(rows, SETTINGS, {"eval_set": EVAL_SET, "threshold": 0.5}, "scratch")
    assert table["steps_to_threshold"].tolist() == [20] * 4


def test_reverse_finetuning_with_named_tasks_a_staged_baseline_and_a_lower_is_better_metric(declared_registry):
    """The TinyStories layout: the baseline itself starts from a run (it first learns the format), the compared
    runs are named by task, and nll reaches its threshold from above."""
    from ptft.data import declared

    declared.declare({"ts_twist": {"source": "tinystories", "edit": "only"}})
    nll = {("instruct", "ts_twist", "instruct/ts_no_twist/full/lr0.0001/seed0"): [2.4, 1.6, 1.45, 1.4],
           ("stories", "ts_twist_base", "stories/ts_format_base/full/lr0.0001/seed0"): [3.0, 2.2, 1.8, 1.49],
           ("stories", "ts_format_base", None): [4.0, 3.0, 2.0, 1.0],  # the baseline's first stage: not compared
           ("instruct", "ts_no_twist", None): [1.3, 1.4, 1.5, 1.6]}  # fmt: skip
    rows = pd.DataFrame([trajectory_row(c, t, 0, p, s, v, metric="nll", eval_set="ts_twist")
                         for (c, t, p), values in nll.items() for s, v in zip(STEPS, values, strict=True)])  # fmt: skip
    reverse = {"eval_set": "ts_twist", "threshold": 1.5, "tasks": ["ts_twist", "ts_twist_base"]}
    table = reverse_finetuning(rows, SETTINGS, reverse, "stories")
    assert table.groupby("train_task")["role"].unique().map(list).to_dict() == {
        "ts_twist": ["reverse"], "ts_twist_base": ["baseline"]}  # fmt: skip
    assert table.groupby("train_task")["steps_to_threshold"].first().to_dict() == {"ts_twist": 20, "ts_twist_base": 30}
    # Without tasks, a baseline run must start from its checkpoint: the staged baseline is then no baseline.
    plain = reverse_finetuning(rows, SETTINGS, {**reverse, "tasks": None}, "stories")
    assert set(plain.loc[plain["role"] == "baseline", "train_task"]) == {"ts_format_base"}
