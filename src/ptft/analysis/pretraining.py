"""Which eval sets are learned during pre-training, by a stated rule on the base checkpoints.

Rule (Amuro & Char §4, "some tasks are learned during pre-training, others never are"): with
the base models' rows of one format and metric ordered by pre-training step, an eval set is
*learned during pre-training* when its value at the last checkpoint exceeds its value at the
first by at least ``min_gain`` (absolute; ``aggregate.learned_min_gain``, default 0.05).
Eval sets with base rows at fewer than two steps are left out.
"""

from __future__ import annotations

import pandas as pd

LEARNED_COLUMNS = ("eval_set", "metric", "first_step", "last_step", "first_value", "last_value", "gain", "learned")


def learned_during_pretraining(perf: pd.DataFrame, format: str = "default", min_gain: float = 0.05) -> pd.DataFrame:
    base = perf[(perf["method"] == "base") & (perf["format"] == format) & perf["step"].notna()]
    rows = []
    for (eval_set, metric), group in base.groupby(["eval_set", "metric"], sort=True):
        group = group.sort_values("step", kind="mergesort")
        if group["step"].nunique() < 2:
            continue
        first, last = group.iloc[0], group.iloc[-1]
        gain = float(last["value"] - first["value"])
        rows.append((eval_set, metric, first["step"], last["step"], first["value"], last["value"], gain,
                     gain >= min_gain))  # fmt: skip
    out = pd.DataFrame(rows, columns=list(LEARNED_COLUMNS))
    dtypes = {"eval_set": "str", "metric": "str", "first_step": "Int64", "last_step": "Int64",
              "first_value": "float64", "last_value": "float64", "gain": "float64", "learned": "bool"}  # fmt: skip
    return out.astype(dtypes)
