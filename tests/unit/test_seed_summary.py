"""The seed-summary table: mean, standard deviation and count over seeds of every performance row."""

import math

import numpy as np
import pandas as pd
import pytest

from ptft.analysis.seeds import SUMMARY_COLUMNS, seed_summary


def perf_rows():
    base = dict(study="s", step=100, tokens=1000, eval_task="nli", format="default", shots=0, metric="accuracy",
                ci_low=0.0, ci_high=1.0, n=10, diff_ci_low=np.nan, diff_ci_high=np.nan)  # fmt: skip
    rows = [
        {**base, "checkpoint": "step100", "train_task": "none", "method": "base", "lr": np.nan, "seed": pd.NA,
         "lr_selected": pd.NA, "eval_set": "a", "relation": "pretraining", "value": 0.4},
    ]  # fmt: skip
    for seed, value in zip((0, 1, 2), (0.6, 0.7, 0.9), strict=True):
        rows.append({**base, "checkpoint": "step100", "train_task": "a", "method": "full", "lr": 1e-3, "seed": seed,
                     "lr_selected": pd.NA, "eval_set": "a", "relation": "in-domain", "value": value})  # fmt: skip
    # lr selected per seed: seed 0 chose 1e-3, seed 1 chose 1e-2; summarised together.
    for seed, lr, value in ((0, 1e-3, 0.5), (1, 1e-2, 0.8)):
        rows.append({**base, "checkpoint": "step100", "train_task": "a", "method": "lora", "lr": lr, "seed": seed,
                     "lr_selected": True, "eval_set": "a", "relation": "in-domain", "value": value})  # fmt: skip
    perf = pd.DataFrame(rows)
    return perf.astype({"seed": "Int64", "lr_selected": "boolean", "step": "Int64", "tokens": "Int64"})


def test_mean_std_and_count_over_seeds():
    table = seed_summary(perf_rows())
    assert tuple(table.columns) == SUMMARY_COLUMNS
    out = table.set_index("method")
    full = out.loc["full"]
    assert full["value_mean"] == pytest.approx(np.mean([0.6, 0.7, 0.9]))
    assert full["value_std"] == pytest.approx(np.std([0.6, 0.7, 0.9], ddof=1))
    assert full["n_seeds"] == 3 and full["seeds"] == [0, 1, 2] and full["lrs"] == [1e-3]
    base = out.loc["base"]
    assert base["n_seeds"] == 1 and np.isnan(base["value_std"]) and base["seeds"] == []
    lora = out.loc["lora"]
    assert lora["n_seeds"] == 2 and np.isnan(lora["lr"]) and lora["lrs"] == [1e-3, 1e-2]
    assert lora["value_mean"] == pytest.approx(0.65)


def test_a_repeated_seed_is_an_error():
    perf = perf_rows()
    perf = pd.concat([perf, perf.iloc[[1]]], ignore_index=True)
    with pytest.raises(ValueError, match="more than one performance row"):
        seed_summary(perf)


def test_student_t_interval_of_the_mean_over_seeds():
    from scipy import stats

    values = [0.6, 0.7, 0.9]
    table = seed_summary(perf_rows(), {"bootstrap": {"confidence": 0.9}}).set_index("method")
    full = table.loc["full"]
    # By hand: mean 0.7333…, sd 0.15275…, t_{0.95, 2} = 2.919986 (the 95th percentile of t with 2 dof).
    mean, sd = sum(values) / 3, math.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / 2)
    assert full["ci_low"] == pytest.approx(mean - 2.919986 * sd / math.sqrt(3), abs=1e-6)
    assert full["ci_high"] == pytest.approx(mean + 2.919986 * sd / math.sqrt(3), abs=1e-6)
    low, high = stats.t.interval(0.9, 2, loc=np.mean(values), scale=stats.sem(values))
    assert (full["ci_low"], full["ci_high"]) == pytest.approx((low, high))
    # Without settings: 95 %; one seed (the base model): no interval.
    default = seed_summary(perf_rows()).set_index("method")
    assert default.loc["full", "ci_high"] == pytest.approx(stats.t.interval(0.95, 2, np.mean(values),
                                                                            stats.sem(values))[1])  # fmt: skip
    assert default.loc["base", "n_seeds"] == 1
    assert np.isnan(default.loc["base", "ci_low"]) and np.isnan(default.loc["base", "ci_high"])


def axes_rows():
    """perf_rows plus the new axes: the full runs at two train sizes, and a run from a run per seed."""
    perf = perf_rows()
    full = perf[perf["method"] == "full"]
    sized = pd.concat([full.assign(train_size=100), full.assign(train_size=200, value=full["value"] + 0.1)])
    # Each seed of the child run started from the same seed of its parent, and stopped at its own best step.
    child = full.assign(train_task="b", parent=[f"ft/step100/a/full/lr0.001/seed{s}" for s in full["seed"]],
                        ft_step=[30, 40, 40])  # fmt: skip
    rest = perf[perf["method"] != "full"]
    out = pd.concat([rest, sized, child], ignore_index=True)
    return out.astype({"train_size": "Int64", "parent": "string", "ft_step": "Int64"})


def test_sizes_and_parents_are_summarised_apart():
    table = seed_summary(axes_rows())
    assert tuple(table.columns) == SUMMARY_COLUMNS
    full = table[table["method"] == "full"]
    # One row per size of task a and one for the child run b: seeds are merged, sizes and runs are not.
    assert len(table) == 1 + 1 + 2 + 1 and (full["n_seeds"] == 3).all()
    by = full.set_index(full["train_size"].fillna(-1).astype(int).astype(str) + full["train_task"])
    assert by.loc["100a", "value_mean"] == pytest.approx(np.mean([0.6, 0.7, 0.9]))
    assert by.loc["200a", "value_mean"] == pytest.approx(np.mean([0.7, 0.8, 1.0]))
    child = by.loc["-1b"]
    assert child["parent"] == "ft/step100/a/full/lr0.001"  # the seeds' parents differ in their seed only
    assert child["parents"] == [f"ft/step100/a/full/lr0.001/seed{s}" for s in (0, 1, 2)]
    assert pd.isna(child["ft_step"]) and child["ft_steps"] == [30, 40]  # selected steps differ between seeds
    assert pd.isna(by.loc["100a", "parent"]) and by.loc["100a", "parents"] == []


def test_trajectory_summary_keeps_each_snapshot_step():
    from ptft.analysis.seeds import trajectory_seed_summary

    full = perf_rows().query("method == 'full'")
    traj = pd.concat([full.assign(ft_step=step, value=full["value"] * step / 10) for step in (0, 5, 10)])
    traj = traj.astype({"ft_step": "Int64"})
    table = trajectory_seed_summary(traj, {"bootstrap": {"confidence": 0.95}})
    assert table["ft_step"].tolist() == [0, 5, 10] and (table["n_seeds"] == 3).all()
    assert table["value_mean"].tolist() == pytest.approx([0.0, np.mean([0.6, 0.7, 0.9]) / 2, np.mean([0.6, 0.7, 0.9])])
    assert table["ci_low"].iloc[0] == 0.0 == table["ci_high"].iloc[0]  # every seed scores 0: a zero-width interval
    # A step is part of the row here: the same seed at two steps is no repetition, at one step it is.
    with pytest.raises(ValueError, match="more than one trajectory row"):
        trajectory_seed_summary(pd.concat([traj, traj.iloc[[0]]]))
