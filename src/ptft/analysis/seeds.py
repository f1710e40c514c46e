"""Seed summary: mean, standard deviation, interval and count over fine-tuning seeds of every performance row.

A row of ``seed_summary`` is a row of the performance table with its ``seed`` taken out: the
``value`` of the rows that differ only in their seed is summarised as ``value_mean``,
``value_std`` (sample standard deviation, ddof = 1; null for a single seed), ``n_seeds`` and a
Student-t interval of the mean over seeds,

    ci_low, ci_high = value_mean ∓ t_{(1 + c) / 2, n − 1} · value_std / √n,    n = n_seeds,

with ``c`` the ``aggregate.bootstrap.confidence`` (0.95 where the settings have none) and
``t_{q, n − 1}`` the q-quantile of Student's t with n − 1 degrees of freedom (``scipy.stats.t``);
null for a single seed. It treats the seeds' values as a sample of the run's outcome over seeds; it
says nothing of the evaluation's sampling error, which the rows' own bootstrap intervals measure.

``seeds`` lists the seeds. Base checkpoints have no seed: their rows are kept with ``n_seeds = 1``.
Where the lr was selected per seed on validation (``lr_selected`` true), the seeds may have chosen
different lrs: those rows are summarised together, with ``lr`` null and the chosen lrs in ``lrs``.

A run is also told apart by its ``train_size`` and ``parent`` (:mod:`ptft.analysis.runs`). The
seeds of a run that started from another run may each have started from the same seed of the
parent: seeds are matched by the parent's run without its seed, and ``parent`` is the parents'
common model id, or, where the seeds' parents differ, that run without a seed (the ids in
``parents``). ``ft_step``: in ``seed_summary`` (final models, whose step may be selected per seed)
the seeds are summarised together and ``ft_step`` is their common step, null where they differ
(the steps in ``ft_steps``); in ``trajectory_seed_summary`` (snapshots along fine-tuning, a table
of :mod:`ptft.analysis.trajectory`) the step is part of the row, as in the trajectory table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ptft.analysis.registry import Analysis, Table, register
from ptft.analysis.runs import parent_run, parent_runs, with_run_axes

KEYS = ["study", "checkpoint", "step", "tokens", "train_task", "method", "lr", "train_size", "parent", "ft_step",
        "lr_selected", "eval_set", "eval_task", "format", "shots", "relation", "metric"]  # fmt: skip
SUMMARY_COLUMNS = (*KEYS, "value_mean", "value_std", "ci_low", "ci_high", "n_seeds", "seeds", "lrs", "parents",
                   "ft_steps")  # fmt: skip
DEFAULT_CONFIDENCE = 0.95


def seed_summary(perf: pd.DataFrame, settings: dict | None = None, by_ft_step: bool = False) -> pd.DataFrame:
    """The summary over seeds of the rows of ``perf`` (module docstring); ``settings``: the ``aggregate`` section.

    ``by_ft_step``: the rows' ``ft_step`` is part of their key (snapshots of the trajectory table),
    not an attribute of the final model that the seeds may differ in.
    """
    from scipy import stats

    confidence = ((settings or {}).get("bootstrap") or {}).get("confidence", DEFAULT_CONFIDENCE)
    rows = with_run_axes(perf)
    # Parents as objects: on a pyarrow string column the aggregated lists would become pyarrow lists,
    # whose type a Parquet file's pandas metadata cannot name.
    rows = rows.assign(run_lr=rows["lr"], run_parent=parent_runs(rows["parent"], _id), run_ft_step=rows["ft_step"],
                       parent=parent_runs(rows["parent"]))  # fmt: skip
    rows.loc[rows["lr_selected"].fillna(False).astype(bool), "lr"] = float("nan")
    if not by_ft_step:
        rows["ft_step"] = pd.array([pd.NA] * len(rows), dtype="Int64")
    dup = rows[rows["seed"].notna() & rows.duplicated([*KEYS, "seed"], keep=False)]
    if len(dup):
        first = dup.iloc[0][[*KEYS, "seed"]].to_dict()
        table = "trajectory" if by_ft_step else "performance"
        raise ValueError(f"seed_summary: more than one {table} row for {first}")
    out = (
        rows.groupby(KEYS, dropna=False, sort=True)
        .agg(
            value_mean=("value", "mean"),
            value_std=("value", "std"),
            n_seeds=("value", "size"),
            seeds=("seed", lambda s: [int(x) for x in sorted(s.dropna())]),
            lrs=("run_lr", lambda s: sorted({float(x) for x in s.dropna()})),
            parents=("run_parent", lambda s: sorted({str(x) for x in s.dropna()})),
            ft_steps=("run_ft_step", lambda s: sorted({int(x) for x in s.dropna()})),
        )
        .reset_index()
    )
    # Where every seed has the same parent (or final step), the row names it as the table does.
    out["parent"] = [p[0] if len(p) == 1 else parent_run(run)
                     for p, run in zip(out["parents"], out["parent"], strict=True)]  # fmt: skip
    if not by_ft_step:
        out["ft_step"] = pd.array([s[0] if len(s) == 1 else pd.NA for s in out["ft_steps"]], dtype="Int64")
    n = out["n_seeds"].to_numpy()
    several = n > 1
    dof = np.where(several, n - 1, 1)  # any positive value: the rows of one seed are nulled below
    half = stats.t.ppf((1.0 + confidence) / 2.0, dof) * out["value_std"].to_numpy(dtype=float) / np.sqrt(n)
    mean = out["value_mean"].to_numpy(dtype=float)
    out["ci_low"] = np.where(several, mean - half, np.nan)
    out["ci_high"] = np.where(several, mean + half, np.nan)
    out = out.astype({"n_seeds": "int64", "lr": "float64", "step": "Int64", "tokens": "Int64",
                      "train_size": "Int64", "ft_step": "Int64", "parent": "object"})  # fmt: skip
    return out[list(SUMMARY_COLUMNS)].reset_index(drop=True)


def _id(parent) -> str | None:
    return None if parent is None or pd.isna(parent) else str(parent)


def trajectory_seed_summary(trajectory: pd.DataFrame, settings: dict | None = None) -> pd.DataFrame:
    """:func:`seed_summary` of the trajectory table: one row per snapshot step over the seeds of a run."""
    return seed_summary(trajectory, settings, by_ft_step=True)


SEED_SUMMARY_CAPTION = (
    "Every {rows} summarised over fine-tuning seeds: ``value_mean``, ``value_std`` (sample standard deviation; "
    "null for one seed), ``n_seeds`` and ``ci_low``/``ci_high``, the Student-t interval of the mean over seeds, "
    "mean ∓ t_((1+c)/2, n−1) · sd / √n with c = ``aggregate.bootstrap.confidence`` (null for one seed), with the "
    "``seeds``, the ``lrs`` (an lr selected per seed may differ between seeds), the ``parents`` and the "
    "``ft_steps`` of the runs. Runs of different ``train_size`` or ``parent`` are summarised apart. {steps} "
    "Defined in ``ptft.analysis.seeds``."
)

register(
    Analysis(
        name="seeds",
        category="Performance across checkpoints",
        tables=(
            Table(
                "seed_summary",
                SEED_SUMMARY_CAPTION.format(
                    rows="performance row",
                    steps="The final models of a run's seeds are summarised together; ``ft_step`` is their common "
                    "fine-tuning step, null where the seeds' (selected) steps differ.",
                ),
                seed_summary,
            ),
        ),
    )
)
