"""What identifies a fine-tuning run in the result tables, for the analyses and figures that group rows per run.

A fine-tuned model is a run of (checkpoint, train_task, method, lr, seed) and, where the study has
them, of a training-set size (``train_size``, null when the study does not sweep sizes) and a
parent (``parent``, the model id of the fine-tuned run it started from; null when it started from
the pre-training checkpoint). ``ft_step`` says how far into its run a model is (snapshots of the
trajectory table; in the performance table the final model's step). Tables written before these
axes existed lack the columns: :func:`with_run_axes` adds them as null, which is what they mean
there (one size, no parent, step unknown).

A run and its seeds: the seeds of a run share everything but the seed. Each seed of a child run
starts from the same seed of its parent (``…/seed0`` from ``…/seed0``), so the parent's seed is
not part of the child's run: :func:`parent_run` drops it. Along pre-training, the runs of one
configuration at each checkpoint start from that checkpoint's parent: a line across checkpoints
is told apart by :func:`parent_config`, the parent without checkpoint and seed.
"""

from __future__ import annotations

import re

import pandas as pd

# Beyond checkpoint/train_task/method/lr/seed: the axes that tell two runs of one task apart.
RUN_AXES = ("train_size", "parent")
# A run's identity without its seed (with it: RUN_KEYS + seed).
RUN_KEYS = ["checkpoint", "train_task", "method", "lr", *RUN_AXES]
_AXIS_DTYPES = {"train_size": "Int64", "parent": "object", "ft_step": "Int64"}
# Every seed of a chain (a run from a run from …): the seeds of the runs of one chain are the same.
_SEED_SEGMENT = re.compile(r"/seed\d+(?=/|$)")
_CHECKPOINT_PREFIX = re.compile(r"^ft/[^/]+/")
# The folders of a run id after its method (lr or selection, seed), and of its size.
_RUN_SEGMENT = re.compile(r"seed\d+|lr[0-9.e+-]+|selected")
_SIZE_SEGMENT = re.compile(r"n\d+")


def with_run_axes(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``train_size``, ``parent`` and ``ft_step`` columns, null where it had none."""
    missing = {c: pd.Series(pd.NA, index=df.index, dtype=t) for c, t in _AXIS_DTYPES.items() if c not in df}
    return df.assign(**missing) if missing else df


def parent_run(parent) -> str | None:
    """The parent's run without its seed(s) (``ft/step200/a/full/lr0.001/seed0`` → ``ft/step200/a/full/lr0.001``)."""
    if parent is None or pd.isna(parent):
        return None
    return _SEED_SEGMENT.sub("", str(parent))


def parent_config(parent) -> str | None:
    """The parent's run without checkpoint and seed(s) (``ft/step200/a/full/lr0.001/seed0`` → ``a/full/lr0.001``)."""
    run = parent_run(parent)
    return None if run is None else _CHECKPOINT_PREFIX.sub("", run)


def parent_runs(parents: pd.Series, of=parent_run) -> pd.Series:
    """``of`` (:func:`parent_run`, :func:`parent_config`) each of ``parents``, as objects (None: no parent).

    Not ``Series.map``: on a string column of nulls only it would infer a null-typed column, which takes no value.
    """
    return pd.Series([of(p) for p in parents], index=parents.index, dtype="object")


def parent_label(parent) -> str:
    """``task (method)`` of the run a parent model id names, ``task n=<size> (method)`` where it has a size.

    Ids are ``ft/<checkpoint>/<task>[/n<size>]/<method>/(lr<lr>|selected)/seed<seed>`` (:attr:`ptft.plan.Model.id`);
    a run from a run continues its parent's id with ``/then/<task>/…``, and the label is of its last run.
    It may come without checkpoint or seed (:func:`parent_config`). An id that does not parse is its own label.
    """
    tail = str(parent).rsplit("/then/", 1)
    parts = tail[-1].split("/")
    if len(tail) == 1 and parts[0] == "ft":
        parts = parts[2:]  # ft/<checkpoint>/
    parts = [p for p in parts if not _RUN_SEGMENT.fullmatch(p)]
    if len(parts) == 2:
        return f"{parts[0]} ({parts[1]})"
    if len(parts) == 3 and _SIZE_SEGMENT.fullmatch(parts[1]):
        return f"{parts[0]} n={parts[1][1:]} ({parts[2]})"
    return str(parent)


def run_label(name: str, train_size=None, parent=None) -> str:
    """A line's name: ``name`` (a task, with its method where needed), its size and where it started.

    ``toy_para n=100``; ``toy_summary ← toy_chat (instruct)`` (started from a toy_chat instruct run).
    """
    label = name if train_size is None or pd.isna(train_size) else f"{name} n={int(train_size)}"
    return label if parent is None or pd.isna(parent) else f"{label} ← {parent_label(parent)}"


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's final model: those whose ``ft_step`` is the largest of their run (and seed).

    Rows without an ``ft_step`` (base models, tables before snapshots) are final.
    """
    df = with_run_axes(df)
    keys = [k for k in (*RUN_KEYS, "seed") if k in df]
    last = df.groupby(keys, dropna=False, sort=False)["ft_step"].transform("max")
    return df[df["ft_step"].isna() | (df["ft_step"] == last).fillna(False)]


def largest_size_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the largest ``train_size`` among the runs of each (checkpoint, train_task, method, parent);
    runs without a size are kept where no run of theirs has one."""
    df = with_run_axes(df)
    keys = ["checkpoint", "train_task", "method", "parent"]
    largest = df.assign(parent=parent_runs(df["parent"])).groupby(keys, dropna=False, sort=False)["train_size"]
    largest = largest.transform("max")
    return df[largest.isna() | (df["train_size"] == largest).fillna(False)]
