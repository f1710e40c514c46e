"""Prompt-format sensitivity: how much a model's score depends on the prompt format.

For each model (checkpoint, method, training task, lr, seed, and train size and parent where the
study has them), eval set and metric scored in more than one format: its value in each format
(``default``, ``instruct``, ``io``; null where not scored), ``range`` = max − min over the
formats scored, and ``best_format``. The summary per checkpoint and method (and training task,
train size and parent) is the mean ``range`` over eval sets (:func:`format_sensitivity_summary`).
"""

from __future__ import annotations

import pandas as pd

from ptft.analysis.registry import Analysis, Table, register
from ptft.analysis.runs import RUN_AXES, parent_runs, with_run_axes
from ptft.data.tasks import FORMATS

MODEL_KEYS = ["checkpoint", "step", "method", "train_task", "lr", "seed", *RUN_AXES]
SUMMARY_KEYS = ["checkpoint", "step", "method", "train_task", *RUN_AXES]


def format_sensitivity(perf: pd.DataFrame) -> pd.DataFrame:
    keys = [*MODEL_KEYS, "eval_set", "metric"]
    # groupby + unstack, not pivot_table(dropna=False): that reindexes to the product of every key's
    # values, which grows with each axis of the study, only for the empty rows to be dropped again.
    grouped = with_run_axes(perf).groupby([*keys, "format"], dropna=False, sort=True)["value"].first()
    wide = grouped.unstack("format").dropna(how="all").reindex(columns=list(FORMATS))
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
    """Mean and max ``range`` over eval sets, per checkpoint and method (and training task, train size and
    parent run; lrs and seeds pooled, so ``parent`` is the parent's run without its seed)."""
    rows = with_run_axes(sensitivity)
    out = (
        rows.assign(parent=parent_runs(rows["parent"]))
        .groupby(SUMMARY_KEYS, dropna=False, sort=False)
        .agg(mean_range=("range", "mean"), max_range=("range", "max"), n_eval_sets=("range", "size"))
        .reset_index()
    )
    order = ["method", "train_task", *RUN_AXES, "step"]
    return out.sort_values(order, na_position="last", kind="mergesort").reset_index(drop=True)


def format_summary_table(perf: pd.DataFrame, settings: dict) -> pd.DataFrame:
    return format_sensitivity_summary(format_sensitivity(perf))


def _format_eval_sets(plan) -> list[str]:
    """Eval sets the base models score in more than one prompt format."""
    first = plan.base_models[0].evaluations if plan.base_models else ()
    return [e.eval_set for e in first if len(e.formats) > 1]


def _plot(inputs, settings, spec, out) -> None:
    from ptft.aggregate import figures

    perf = figures.primary_metric_rows(pd.read_parquet(inputs["performance"][0]))
    figures.plot_format_sensitivity(perf, spec["eval_sets"], out / "format_sensitivity.png")


register(
    Analysis(
        name="formats",
        category="Prompt formats",
        tables=(
            Table(
                "format_sensitivity",
                "Prompt-format sensitivity: for each model, eval set and metric scored in several formats, the "
                "score in each format (default, instruct, input-output), the range (max − min) and the best "
                "format. Defined in ``ptft.analysis.formats``.",
                lambda perf, settings: format_sensitivity(perf),
            ),
            Table(
                "format_sensitivity_per_checkpoint",
                "Prompt-format sensitivity per checkpoint and method (and training task, train size and parent): "
                "the mean and largest range (max − min over formats) over eval sets, lrs and seeds pooled. Defined "
                "in ``ptft.analysis.formats``.",
                format_summary_table,
            ),
        ),
        figure_caption="Prompt-format sensitivity across pre-training: one panel per eval set scored in several "
        "formats (default, instruct, input-output); color says the format, dashed lines are the base checkpoints "
        "(few-shot), solid lines the models fine-tuned in-domain (averaged over methods, lrs, seeds, train sizes and "
        "parent runs). The gap between colors at a step is what the ``format_sensitivity`` table reports as ``range``.",
        figures=lambda plan: ["format_sensitivity"] if _format_eval_sets(plan) else [],
        plot=_plot,
        spec=lambda plan: {"eval_sets": _format_eval_sets(plan)},
    )
)
