"""Change after fine-tuning: fine-tuned vs base performance of the same checkpoint.

Pure functions of the performance table (Sun & Dredze 2024, Table 6 / Figure 4).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PAIR_KEYS = ["checkpoint", "eval_set", "format", "metric"]
CHANGE_COLUMNS = ("checkpoint", "step", "relation", "learned", "avg_diff", "avg_ratio_pct", "n_pairs")
SLOPE_COLUMNS = ("relation", "learned", "n_steps", "slope_avg_diff", "slope_avg_ratio_pct")
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
    """Linear trend of the average change over pre-training, per relation and learned split.

    ``slope_avg_diff`` (and ``slope_avg_ratio_pct``) is the least-squares slope
    (``np.polyfit`` degree 1) of ``avg_diff`` (``avg_ratio_pct``) against ``step / 100_000``:
    the change per 100k pre-training steps. Rows without a step or value are left out; the slope is
    NaN with fewer than 2 distinct steps. ``n_steps`` counts the distinct steps used for
    ``avg_diff``. A final checkpoint needs a step in the manifest to count (the paper uses 750000
    for OLMo-1B ``main``).
    """
    if "learned" not in change_df:
        change_df = change_df.assign(learned=pd.array([pd.NA] * len(change_df), dtype="boolean"))
    rows = []
    for (relation, learned), group in change_df.groupby(["relation", "learned"], sort=True, dropna=False):
        group = group[group["step"].notna()]
        steps = group["step"].to_numpy(dtype=np.float64) / STEP_UNIT
        rows.append(
            {
                "relation": relation,
                "learned": learned,
                "n_steps": int(np.unique(steps[group["avg_diff"].notna().to_numpy()]).size),
                "slope_avg_diff": _slope(steps, group["avg_diff"].to_numpy(dtype=np.float64)),
                "slope_avg_ratio_pct": _slope(steps, group["avg_ratio_pct"].to_numpy(dtype=np.float64)),
            }
        )
    out = pd.DataFrame(rows, columns=list(SLOPE_COLUMNS))
    return out.astype(
        {
            "relation": "str",
            "learned": "boolean",
            "n_steps": "int64",
            "slope_avg_diff": "float64",
            "slope_avg_ratio_pct": "float64",
        }  # fmt: skip
    )


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    if np.unique(x).size < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])
