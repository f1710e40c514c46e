"""Mean ratio of change (MRC): what fine-tuning on one task does to other tasks and domains.

Amuro & Char §6.2: for a model fine-tuned on task ``t`` from checkpoint ``i``,

    MRC = 1/|D_E \\ {t}| · Σ_{d ∈ D_E \\ {t}} (Perf_t^i(d) − Perf_BASE^i(d)) / Perf_BASE^i(d)

over the eval sets ``d`` of a group, in percent. The groups here are the rows' ``relation`` and
the kinds of the training and eval tasks:

- ``classification→generation`` / ``generation→classification``: ``relation == "cross-task"``,
  by the kind of the training task and of the eval set;
- ``ood``: ``relation == "ood"`` (same task, another domain).

Each fine-tuned row is paired with the base row of the same checkpoint, eval set, format and
metric (:func:`ptft.aggregate.change.paired_change`); pairs whose base is 0 have no ratio and
are left out. ``mrc_pct`` is the mean of the pairs' ratios over every training task, eval set
and checkpoint of the group (``checkpoint == "all"``) or over one checkpoint. ``ci_low`` /
``ci_high``: the seeded percentile bootstrap of that mean over its pairs
(:func:`ptft.aggregate.bootstrap.percentile_ci`, seed = CRC-32 of ``"seed|group|checkpoint"``).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from ptft.aggregate.bootstrap import percentile_ci
from ptft.aggregate.change import paired_change
from ptft.analysis.registry import Analysis, Table, register
from ptft.data.registry import DATASETS
from ptft.data.tasks import TASK_TYPES

MRC_COLUMNS = ("group", "checkpoint", "step", "mrc_pct", "ci_low", "ci_high", "n_pairs")


def _kind_of_dataset(name: str) -> str | None:
    spec = DATASETS.get(name)
    return spec.task.kind if spec else None


def transfer_group(train_task: str, eval_task: str, relation: str) -> str | None:
    """The MRC group of a fine-tuned row, or None if it belongs to none."""
    if relation == "ood":
        return "ood"
    if relation != "cross-task":
        return None
    train_kind = _kind_of_dataset(train_task)
    eval_kind = TASK_TYPES[eval_task].kind if eval_task in TASK_TYPES else None
    if train_kind and eval_kind and train_kind != eval_kind:
        return f"{train_kind}→{eval_kind}"
    return None


def mean_ratio_of_change(
    perf: pd.DataFrame, format: str = "default", resamples: int = 3000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """MRC per group, overall (``checkpoint == "all"``) and per checkpoint; see the module docstring."""
    pairs = paired_change(perf, format)
    pairs["group"] = [transfer_group(*row) for row in pairs[["train_task", "eval_task", "relation"]].itertuples(False)]
    pairs = pairs[pairs["group"].notna() & pairs["ratio_pct"].notna()]
    rows = []
    for group, by_group in pairs.groupby("group", sort=True):
        parts = [("all", pd.NA, by_group)]
        parts += [(c, g["step"].iloc[0], g) for c, g in by_group.groupby("checkpoint", sort=False)]
        for checkpoint, step, part in parts:
            ratios = part["ratio_pct"].to_numpy(dtype=np.float64)
            key = zlib.crc32(f"{seed}|{group}|{checkpoint}".encode())
            low, high = percentile_ci(ratios, resamples, confidence, key)
            rows.append((group, checkpoint, step, float(ratios.mean()), low, high, ratios.size))
    out = pd.DataFrame(rows, columns=list(MRC_COLUMNS))
    out = out.astype({"group": "str", "checkpoint": "str", "step": "Int64", "n_pairs": "int64"})
    order = out["checkpoint"].ne("all")
    return (
        out.assign(_order=order)
        .sort_values(["group", "_order", "step"], na_position="last", kind="mergesort")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def mrc_table(perf: pd.DataFrame, settings: dict) -> pd.DataFrame:
    boot = settings["bootstrap"]
    return mean_ratio_of_change(perf, settings["figure_format"], boot["resamples"], boot["confidence"], boot["seed"])


# Relations with a figure of their own: the fine-tuned models of that relation per eval set.
FIGURE_RELATIONS = ("ood", "cross-task")


def _relations(plan) -> list[str]:
    present = {row["relation"] for row in plan.relation_rows()}
    return [r for r in FIGURE_RELATIONS if r in present]


def _plot(inputs, settings, spec, out) -> None:
    from ptft.aggregate import figures

    perf = figures.primary_metric_rows(pd.read_parquet(inputs["performance"][0]))
    for relation in spec["relations"]:
        eval_sets = sorted(perf.loc[perf["relation"] == relation, "eval_set"].unique())
        path = out / f"{relation.replace('-', '_')}.png"
        figures.plot_base_vs_finetuned_grid(perf, eval_sets, settings["figure_format"], path, relation=relation)


register(
    Analysis(
        name="transfer",
        # Changes are over the base checkpoint's rows: none where no base model is scored (classifier studies).
        applies=lambda plan: plan.base_scored,
        category="Transfer: OOD and cross-task",
        tables=(
            Table(
                "mrc",
                "Mean ratio of change (Amuro & Char §6.2) per group and checkpoint: ``mrc_pct`` is the mean "
                "over (training task, eval set) pairs of (fine-tuned − base) / base × 100, for cross-task "
                "transfer (``classification→generation``, ``generation→classification``) and for OOD sets; "
                "``checkpoint = all`` pools every checkpoint. ``ci_low``/``ci_high``: seeded 95 % percentile "
                "bootstrap over the pairs; every fine-tuned model is a pair of its own (train sizes and runs from "
                "other runs included). Defined in ``ptft.analysis.transfer``.",
                mrc_table,
            ),
        ),
        figure_caption="Transfer of fine-tuning to other eval sets, per pre-training checkpoint: one panel per "
        "eval set, the base checkpoint (black, dashed) and every model fine-tuned on a task that relates to that "
        "eval set as out-of-domain (same task, other domain: the OOD figure) or as another task (classification "
        "→ generation or back: the cross-task figure). Lines average the lrs and seeds of a training task's run (runs "
        "of other train sizes, n=…, or from another run, ← task (method), are lines of their own); bands are ± one "
        "standard deviation over seeds where a line has several, else the mean 95 % bootstrap interval. The mean "
        "ratio of change of these pairs, with its interval, is in the ``mrc`` table.",
        figures=lambda plan: [r.replace("-", "_") for r in _relations(plan)],
        plot=_plot,
        spec=lambda plan: {"relations": _relations(plan)},
    )
)
