"""Seed summary: mean, standard deviation and count over fine-tuning seeds of every performance row.

A row of ``seed_summary`` is a row of the performance table with its ``seed`` taken out: the
``value`` of the rows that differ only in their seed is summarised as ``value_mean``,
``value_std`` (sample standard deviation, ddof = 1; null for a single seed) and ``n_seeds``,
with ``seeds`` listing them. Base checkpoints have no seed: their rows are kept with
``n_seeds = 1``. Where the lr was selected per seed on validation (``lr_selected`` true), the
seeds may have chosen different lrs: those rows are summarised together, with ``lr`` null and
the chosen lrs in ``lrs``.
"""

from __future__ import annotations

import pandas as pd

from ptft.analysis.registry import Analysis, Table, register

KEYS = ["study", "checkpoint", "step", "tokens", "train_task", "method", "lr", "lr_selected", "eval_set",
        "eval_task", "format", "shots", "relation", "metric"]  # fmt: skip
SUMMARY_COLUMNS = (*KEYS, "value_mean", "value_std", "n_seeds", "seeds", "lrs")


def seed_summary(perf: pd.DataFrame, settings: dict | None = None) -> pd.DataFrame:
    rows = perf.assign(run_lr=perf["lr"])
    rows.loc[rows["lr_selected"].fillna(False).astype(bool), "lr"] = float("nan")
    groups = rows.groupby(KEYS, dropna=False, sort=True)
    dup = rows[rows["seed"].notna() & rows.duplicated([*KEYS, "seed"], keep=False)]
    if len(dup):
        first = dup.iloc[0][[*KEYS, "seed"]].to_dict()
        raise ValueError(f"seed_summary: more than one performance row for {first}")
    out = groups.agg(
        value_mean=("value", "mean"),
        value_std=("value", "std"),
        n_seeds=("value", "size"),
        seeds=("seed", lambda s: [int(x) for x in sorted(s.dropna())]),
        lrs=("run_lr", lambda s: sorted({float(x) for x in s.dropna()})),
    ).reset_index()
    out = out.astype({"n_seeds": "int64", "lr": "float64", "step": "Int64", "tokens": "Int64"})
    return out[list(SUMMARY_COLUMNS)].reset_index(drop=True)


register(
    Analysis(
        name="seeds",
        category="Performance across checkpoints",
        tables=(
            Table(
                "seed_summary",
                "Every performance row summarised over fine-tuning seeds: ``value_mean``, ``value_std`` "
                "(sample standard deviation; null for one seed) and ``n_seeds``, with the ``seeds`` and the "
                "``lrs`` of the runs (an lr selected per seed may differ between seeds). Defined in "
                "``ptft.analysis.seeds``.",
                seed_summary,
            ),
        ),
    )
)
