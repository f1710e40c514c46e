"""Prompt-format sensitivity: how much a model's score depends on the prompt format.

For each model (checkpoint, method, training task, lr, seed), eval set and metric scored in
more than one format: its value in each format (``default``, ``instruct``, ``io``; null where
not scored), ``range`` = max − min over the formats scored, and ``best_format``. The summary
per checkpoint and method is the mean ``range`` over eval sets (:func:`format_sensitivity_summary`).
"""

from __future__ import annotations

import pandas as pd

from ptft.aggregate.performance import FORMATS

MODEL_KEYS = ["checkpoint", "step", "method", "train_task", "lr", "seed"]


def format_sensitivity(perf: pd.DataFrame) -> pd.DataFrame:
    keys = [*MODEL_KEYS, "eval_set", "metric"]
    wide = perf.pivot_table(index=keys, columns="format", values="value", aggfunc="first", dropna=False)
    wide = wide.dropna(how="all").reindex(columns=list(FORMATS))
    wide = wide[wide.notna().sum(axis=1) > 1]
    out = wide.rename(columns={f: f"value_{f}" for f in FORMATS}).reset_index()
    values = out[[f"value_{f}" for f in FORMATS]]
    out["range"] = values.max(axis=1) - values.min(axis=1)
    out["best_format"] = values.idxmax(axis=1).str.removeprefix("value_")
    out.columns.name = None
    return out.sort_values(
        ["method", "train_task", "step", "eval_set"], na_position="last", kind="mergesort"
    ).reset_index(drop=True)


def format_sensitivity_summary(sensitivity: pd.DataFrame) -> pd.DataFrame:
    """Mean and max ``range`` over eval sets, per checkpoint and method (and training task)."""
    out = (
        sensitivity.groupby(["checkpoint", "step", "method", "train_task"], dropna=False, sort=False)
        .agg(mean_range=("range", "mean"), max_range=("range", "max"), n_eval_sets=("range", "size"))
        .reset_index()
    )
    return out.sort_values(["method", "train_task", "step"], na_position="last", kind="mergesort").reset_index(
        drop=True
    )
