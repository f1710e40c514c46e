"""The seed-summary table: mean, standard deviation and count over seeds of every performance row."""

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
