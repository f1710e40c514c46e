"""Change after fine-tuning: fine-tuned vs base performance of the same checkpoint.

Pure functions of the performance table (Sun & Dredze 2024, Table 6 / Figure 4).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PAIR_KEYS = ["checkpoint", "eval_set", "format", "metric"]
CHANGE_COLUMNS = ("checkpoint", "step", "relation", "learned", "avg_diff", "avg_ratio_pct", "n_pairs")
SLOPE_COLUMNS = ("relation", "learned", "kind", "checkpoint", "step", "n_steps", "slope_avg_diff",
                 "slope_avg_ratio_pct")  # fmt: skip
PAIR_TABLE_COLUMNS = ("checkpoint", "step", "avg_diff", "avg_ratio_pct", "n_pairs", "slope_avg_diff")
# Slopes are reported per 100k pre-training steps, as in the paper.
STEP_UNIT = 100_000


def paired_change(perf: pd.DataFrame, format: str = "default") -> pd.DataFrame:
    """Pair every fine-tuned row with the base row of the same checkpoint, eval set, format, metric.

    Returns the fine-tuned rows of ``format`` with ``base_value``, ``diff = value − base_value``
    and ``ratio_pct = (value − base_value) / base_value × 100`` (NaN where ``base_value == 0``).
    Fine-tuned rows without a base row are dropped. Every fine-tuning method is included; filter
    ``perf`` first to study one.
    """
    rows = perf[perf["format"] == format]
    base = rows.loc[rows["method"] == "base", [*PAIR_KEYS, "value"]].rename(columns={"value": "base_value"})
    if base.duplicated(PAIR_KEYS).any():
        first = base.loc[base.duplicated(PAIR_KEYS)].iloc[0].to_dict()
        raise ValueError(f"performance table: more than one base row for {first}")
    pairs = rows[rows["method"] != "base"].merge(base, on=PAIR_KEYS, how="inner")
    pairs["diff"] = pairs["value"] - pairs["base_value"]
    # A zero base score has no defined relative change; NaN keeps it out of the averages.
    base_value = pairs["base_value"].where(pairs["base_value"] != 0)
    pairs["ratio_pct"] = pairs["diff"] / base_value * 100.0
    return pairs.reset_index(drop=True)


def change_after_finetuning(
    perf: pd.DataFrame, format: str = "default", learned: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Average change after fine-tuning per (checkpoint, step, relation, learned).

    Over the pairs of :func:`paired_change` (fine-tuned row, base row of the same checkpoint,
    eval set, format and metric):

    - ``avg_diff`` = mean over pairs of (ft − base), the average raw change;
    - ``avg_ratio_pct`` = mean over pairs of (ft − base) / base × 100 ("Avg Diff Ratio %"),
      ignoring pairs whose base is 0 (NaN if all are);
    - ``n_pairs`` = number of pairs.

    ``learned`` (the table of :func:`ptft.analysis.learned_during_pretraining`) splits the pairs
    by whether their eval set and metric were learned during pre-training (the paper's split of
    Table 6); pairs it does not classify, or all pairs without it, have ``learned`` null.
    Pairs of all fine-tuned runs (train tasks, methods, lrs, seeds) and metrics are pooled.
    Rows are sorted by step, checkpoint, relation, learned.
    """
    pairs = _with_learned(paired_change(perf, format), learned)
    out = (
        pairs.groupby(["checkpoint", "step", "relation", "learned"], dropna=False, sort=False)
        .agg(avg_diff=("diff", "mean"), avg_ratio_pct=("ratio_pct", "mean"), n_pairs=("diff", "size"))
        .reset_index()
    )
    dtypes = {"step": "Int64", "learned": "boolean", "avg_diff": "float64", "avg_ratio_pct": "float64",
              "n_pairs": "int64"}  # fmt: skip
    out = out.astype(dtypes)
    out = out.sort_values(["step", "checkpoint", "relation", "learned"], na_position="last", kind="mergesort")
    return out[list(CHANGE_COLUMNS)].reset_index(drop=True)


def _with_learned(pairs: pd.DataFrame, learned: pd.DataFrame | None) -> pd.DataFrame:
    if learned is None:
        return pairs.assign(learned=pd.array([pd.NA] * len(pairs), dtype="boolean"))
    flags = learned[["eval_set", "metric", "learned"]].astype({"learned": "boolean"})
    return pairs.merge(flags, on=["eval_set", "metric"], how="left")


def change_slope(change_df: pd.DataFrame) -> pd.DataFrame:
    """Trend of the average change over pre-training, per relation and learned split, two ways.

    - ``kind == "fit"`` (ptft's): the least-squares slope (``np.polyfit`` degree 1) of
      ``avg_diff`` (``avg_ratio_pct``) against ``step / 100_000`` over every checkpoint; rows
      without a step or value are left out; NaN with fewer than 2 distinct steps; ``n_steps``
      counts the distinct steps used for ``avg_diff``; ``checkpoint`` and ``step`` are null.
    - ``kind == "consecutive"`` (the paper's Table 6 column "Slope by 100000 Step"): per
      checkpoint, (value − the previous checkpoint's value) / (step − its step) × 100_000, 0 at
      the first checkpoint, as the paper's notebook computes it; ``n_steps`` is 2 (1 at the first).

    A final checkpoint needs a step in the manifest to count (the paper uses 750000 for OLMo-1B ``main``).
    """
    if "learned" not in change_df:
        change_df = change_df.assign(learned=pd.array([pd.NA] * len(change_df), dtype="boolean"))
    rows = []
    for (relation, learned), group in change_df.groupby(["relation", "learned"], sort=True, dropna=False):
        group = group[group["step"].notna()].sort_values("step", kind="mergesort")
        steps = group["step"].to_numpy(dtype=np.float64) / STEP_UNIT
        diff, ratio = group["avg_diff"].to_numpy(dtype=np.float64), group["avg_ratio_pct"].to_numpy(dtype=np.float64)
        key = {"relation": relation, "learned": learned}
        rows.append({**key, "kind": "fit", "checkpoint": None, "step": None,
                     "n_steps": int(np.unique(steps[~np.isnan(diff)]).size), "slope_avg_diff": _slope(steps, diff),
                     "slope_avg_ratio_pct": _slope(steps, ratio)})  # fmt: skip
        for i, checkpoint in enumerate(group["checkpoint"]):
            first, gap = i == 0, steps[i] - steps[i - 1]
            rows.append({**key, "kind": "consecutive", "checkpoint": checkpoint, "step": group["step"].iloc[i],
                         "n_steps": 1 if first else 2,
                         "slope_avg_diff": 0.0 if first else (diff[i] - diff[i - 1]) / gap,
                         "slope_avg_ratio_pct": 0.0 if first else (ratio[i] - ratio[i - 1]) / gap})  # fmt: skip
    out = pd.DataFrame(rows, columns=list(SLOPE_COLUMNS))
    return out.astype({"relation": "str", "learned": "boolean", "kind": "str", "checkpoint": "object", "step": "Int64",
                       "n_steps": "int64", "slope_avg_diff": "float64", "slope_avg_ratio_pct": "float64"})  # fmt: skip


def change_by_pairs(perf: pd.DataFrame, pairs: list[tuple[str, str]], format: str = "default") -> pd.DataFrame:
    """Amuro & Char's Table 6 as the paper's notebook computes it, over an explicit list of pairs.

    ``pairs`` lists (eval set, training task); a pair listed twice counts twice (the paper's
    not-improving group lists sciq ← tulu twice). Per checkpoint, over the pairs with both a
    fine-tuned and a base row (:func:`paired_change`, every fine-tuned run of the task pooled):
    ``avg_diff`` = mean of (ft − base), ``avg_ratio_pct`` = mean of (ft − base) / base × 100,
    ``n_pairs``, and ``slope_avg_diff`` = (``avg_diff`` − the previous checkpoint's) / (step −
    its step) × 100_000, 0 at the first checkpoint. Checkpoints in order of step.
    """
    changes = paired_change(perf, format)
    wanted = pd.DataFrame(pairs, columns=["eval_set", "train_task"])
    rows = wanted.merge(changes, on=["eval_set", "train_task"], how="inner")
    out = (
        rows.groupby(["checkpoint", "step"], sort=False)
        .agg(avg_diff=("diff", "mean"), avg_ratio_pct=("ratio_pct", "mean"), n_pairs=("diff", "size"))
        .reset_index()
        .sort_values("step", kind="mergesort")
        .reset_index(drop=True)
    )
    step = out["step"].to_numpy(dtype=np.float64)
    previous = np.r_[np.nan, out["avg_diff"].to_numpy()[:-1]]
    slope = (out["avg_diff"].to_numpy() - previous) / (step - np.r_[np.nan, step[:-1]]) * STEP_UNIT
    out["slope_avg_diff"] = np.where(np.arange(len(out)) == 0, 0.0, slope)
    return out.astype({"step": "Int64", "n_pairs": "int64"})[list(PAIR_TABLE_COLUMNS)]


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    if np.unique(x).size < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])
