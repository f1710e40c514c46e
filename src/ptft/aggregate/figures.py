"""Figures of the performance, trajectory, change, probe and Dissecting tables, in one style for the whole paper.

Every figure is written twice: PNG at 150 dpi (the report, slides) and SVG (the paper).

A line that averages several runs (lrs, seeds) of one run's configuration draws the spread of
its seeds as a band (:func:`_line`): at a point with more than one seed, the mean over seeds ± one
sample standard deviation over seeds; with one seed, the mean of the runs' bootstrap intervals.
Runs of different training-set sizes (``train_size``) or started from different runs
(``parent``) are different lines (:mod:`ptft.analysis.runs`).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ptft.analysis.runs import (  # noqa: E402
    final_rows,
    largest_size_rows,
    parent_config,
    parent_label,
    parent_runs,
    run_label,
    with_run_axes,
)
from ptft.io import atomic_path  # noqa: E402

DPI = 150
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
}
# Inches per grid panel: three in a row are 7.2 in, a two-column paper's full text width, and
# about 1080 px at 150 dpi, shown near full size in the report (four were shrunk to unreadable).
PANEL_SIZE = (2.4, 2.0)
SINGLE_SIZE = (4.0, 3.2)  # one-panel figure, legend below the axes
MAX_COLUMNS = 3
# A figure whose rows of panels are one thing each (a run's eval sets, its components) keeps up to this many in a row.
MAX_ROW_COLUMNS = 4
BAND_ALPHA = 0.18
RELATION_COLORS = {
    "in-domain": "tab:blue",
    "ood": "tab:orange",
    "cross-task": "tab:green",
    "pretraining": "black",
}
# The change table's split by eval sets learned during pre-training (null: not classified).
LEARNED_LINESTYLES = {"learned": "-", "not learned": "--", "unclassified": ":"}
LEARNED_LABELS = {"learned": "learned in pre-training", "not learned": "not learned", "unclassified": "unclassified"}
FORMAT_COLORS = {"default": "tab:blue", "instruct": "tab:red", "io": "tab:purple"}
# The Dissecting figure: a variant and the component it measures share the factor's color.
FACTOR_ORDER = {"original": 0, "topic": 1, "style": 2, "facts": 3, "other": 4}
FACTOR_COLORS = {"original": "black", "topic": "tab:purple", "style": "tab:green", "facts": "tab:orange",
                 "other": "tab:gray"}  # fmt: skip
DISSECT_MARKERS = ("o", "^", "s", "D")
# Color says the train task, line style the fine-tuning method (base: black dashed).
METHOD_LINESTYLES = {"full": "-", "lora": ":", "lpft": "-.", "instruct": (0, (5, 1))}
# Runs of one task from different parents differ by marker (from the pre-training checkpoint: "o"),
# of different train sizes by shade: the smallest size lightest, the largest the task's own color.
PARENT_MARKERS = ("^", "s", "D", "v", "P", "X")
SIZE_LIGHTEN = 0.6
# Pre-training checkpoints, where they are the lines: a sequential map in step order (its yellow end left out).
CHECKPOINT_CMAP = "viridis"
CHECKPOINT_CMAP_SPAN = 0.85
# The order of eval-set panels of a run: its own task first.
RELATION_ORDER = {"in-domain": 0, "ood": 1, "cross-task": 2}


def primary_metric_rows(perf: pd.DataFrame) -> pd.DataFrame:
    """The rows of each eval set's primary metric (its task's first), e.g. acc but not acc_norm."""
    from ptft.data.registry import get_dataset

    primary = {e: get_dataset(e).task.metric for e in perf["eval_set"].unique()}
    return perf[perf["metric"] == perf["eval_set"].map(primary)]


def plot_base_vs_finetuned(perf: pd.DataFrame, eval_set: str, format: str, path: str | os.PathLike) -> None:
    """Metric value per pre-training step on ``eval_set``: base checkpoint vs each fine-tuning task.

    The base model is a black dashed line; each train task (and method, if several; train size and
    parent run, where the study has them) is a colored line, averaged over lrs and seeds, with the
    seed spread or the bootstrap interval as a band (:func:`_line`). Rows without a step are not drawn.
    """
    colors = _task_colors(perf)
    with _figure(figsize=SINGLE_SIZE) as (fig, ax):
        metric = _draw_base_vs_finetuned(ax, perf, eval_set, format, colors)
        ax.set_xlabel("pre-training step")
        ax.set_ylabel(metric)
        _legend_below(fig, *ax.get_legend_handles_labels(), max_columns=2)
        _save(fig, path)


def plot_base_vs_finetuned_grid(
    perf: pd.DataFrame, eval_sets: list[str], format: str, path: str | os.PathLike, relation: str | None = None
) -> None:
    """:func:`plot_base_vs_finetuned` for several eval sets, one small panel each, shared legend.

    ``relation`` (``ood``, ``cross-task``, ...): draw only the fine-tuned models of that relation
    to the panel's eval set (the OOD and cross-task figures).
    """
    if not eval_sets:
        raise ValueError("plot_base_vs_finetuned_grid: no eval sets given")
    colors = _task_colors(perf)
    with _grid(len(eval_sets)) as (fig, axes, ncols):
        for i, ax in _panels(axes, len(eval_sets)):
            metric = _draw_base_vs_finetuned(ax, perf, eval_sets[i], format, colors, relation)
            ax.set_ylabel(metric)
            if i + ncols >= len(eval_sets):  # lowest panel of its column
                ax.set_xlabel("pre-training step")
        # The shared legend names tasks only: the relation differs from panel to panel.
        legend = _legend_entries(axes, _task_label)
        _legend_below(fig, list(legend.values()), list(legend), max_columns=MAX_COLUMNS)
        _save(fig, path)


def plot_average_change(change_df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Average raw change after fine-tuning (``avg_diff``) per pre-training step, one line per relation."""
    rows = change_df[change_df["step"].notna()]
    if rows.empty:
        raise ValueError("plot_average_change: no rows with a pre-training step")
    with _figure(figsize=SINGLE_SIZE) as (fig, ax):
        ax.axhline(0.0, color="0.4", linewidth=0.8)
        learned = rows["learned"] if "learned" in rows else pd.Series(pd.NA, index=rows.index, dtype="boolean")
        split = learned.notna().any()
        side = learned.astype("object").map({True: "learned", False: "not learned"}).fillna("unclassified")
        for (relation, side_name), group in rows.assign(_side=side).groupby(["relation", "_side"], sort=True):
            group = group.sort_values("step")
            ax.plot(
                group["step"].to_numpy(dtype=float),
                group["avg_diff"].to_numpy(dtype=float),
                marker="o",
                color=RELATION_COLORS.get(relation),
                linestyle=LEARNED_LINESTYLES[side_name],
                label=f"{relation}, {LEARNED_LABELS[side_name]}" if split else relation,
            )
        ax.set_title("Average change after fine-tuning")
        ax.set_xlabel("pre-training step")
        ax.set_ylabel("fine-tuned − base")
        _format_step_axis(ax)
        _legend_below(fig, *ax.get_legend_handles_labels())
        _save(fig, path)


def plot_dissecting(change: pd.DataFrame, components: pd.DataFrame, path: str | os.PathLike) -> None:
    """The Dissecting figure: change in per-token log-likelihood per variant (left) and its split
    into facts, topic, style and other (right), per pre-training step.

    Color is the factor, in both panels (a variant's and the component it measures); variants
    sharing a factor differ by marker; line style is the method. Each panel has its own legend.
    Only final models are drawn (rows at the last ``ft_step`` of their run), of the largest train
    size of each checkpoint's runs (:func:`ptft.analysis.runs.largest_size_rows`); the other sizes
    and steps are :func:`plot_dissect_components`'s.
    """
    change, components = (largest_size_rows(final_rows(df)) for df in (change, components))
    if change.empty or change["step"].isna().all():
        raise ValueError("plot_dissecting: no change rows with a pre-training step")
    size = (2 * PANEL_SIZE[0] * 1.25, PANEL_SIZE[1] * 1.25 + 0.9)
    with _figure(nrows=1, ncols=2, figsize=size) as (fig, (left, right)):
        variants = change[change["step"].notna()].rename(columns={"change": "value"})
        variants = variants.assign(_order=variants["factor"].map(FACTOR_ORDER).fillna(len(FACTOR_ORDER)))
        _dissect_lines(left, variants.sort_values(["_order", "variant"], kind="stable"))
        parts = components[components["step"].notna()].rename(columns={"component": "factor"})
        parts = parts.assign(variant=parts["factor"], _order=parts["factor"].map(FACTOR_ORDER))
        _dissect_lines(right, parts.sort_values("_order", kind="stable"))
        left.set_title("Change per variant")
        right.set_title("Split of the original's change")
        left.set_ylabel("Δ per-token log-likelihood")
        _save(fig, path)


def _dissect_lines(ax, df: pd.DataFrame) -> None:
    """One line per (variant, method, parent run) of ``df`` (columns variant, factor, method, step, value, ci_*)."""
    ax.axhline(0.0, color="0.4", linewidth=0.8)
    df = with_run_axes(df)
    df = df.assign(_parent=parent_runs(df["parent"], parent_config).fillna(""))  # "": from the checkpoint
    several = df["method"].nunique() > 1
    factor_of = dict(zip(df["variant"], df["factor"], strict=True))
    rank: dict[str, int] = {}
    for name in dict.fromkeys(df["variant"]):  # the n-th variant of a factor gets the n-th marker
        rank[name] = sum(factor_of[other] == factor_of[name] for other in rank)
    for (name, method, parent), group in df.groupby(["variant", "method", "_parent"], sort=False):
        factor = factor_of[name]
        marker = DISSECT_MARKERS[rank[name] % len(DISSECT_MARKERS)]
        label = run_label(f"{name} ({method})" if several else str(name), parent=parent or None)
        _line(ax, group, FACTOR_COLORS.get(factor, "tab:brown"), METHOD_LINESTYLES.get(method, "-"), marker, label)
    ax.set_xlabel("pre-training step")
    _format_step_axis(ax)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=2, frameon=False)


def plot_trajectory(traj: pd.DataFrame, train_task: str, format: str, path: str | os.PathLike) -> None:
    """The forgetting curve of ``train_task``: the score on each eval set along fine-tuning.

    ``traj``: trajectory-table rows of one metric per eval set (:func:`primary_metric_rows`). One
    panel per eval set of the task's runs (in-domain first, then OOD, cross-task), in ``format``,
    or where an eval set is not scored in it, its first format scored; x is the fine-tuning step,
    one line per pre-training checkpoint (:func:`_checkpoint_curves`), averaged over lrs and
    seeds. Runs of the task that differ in method, train size or parent are rows of panels of
    their own, labelled as :func:`ptft.analysis.runs.run_label` names them.
    """
    from ptft.data.tasks import FORMATS

    rows = _with_run_columns(traj[(traj["train_task"] == train_task) & traj["ft_step"].notna()])
    if rows.empty:
        raise ValueError(f"plot_trajectory: no trajectory rows of train task {train_task!r}")
    eval_sets = sorted(rows["eval_set"].unique(), key=lambda e: (
        RELATION_ORDER.get(rows.loc[rows["eval_set"] == e, "relation"].iloc[0], len(RELATION_ORDER)), e))  # fmt: skip
    formats = {}
    for eval_set in eval_sets:
        scored = set(rows.loc[rows["eval_set"] == eval_set, "format"])
        formats[eval_set] = format if format in scored else next(f for f in (*FORMATS, *sorted(scored)) if f in scored)
    rows = rows[rows["format"] == rows["eval_set"].map(formats)]
    variants = list(rows.groupby(["method", "_size", "_parent"], sort=True).groups)
    panels, name = [], train_task
    for method, size, parent in variants:
        name = run_label(f"{train_task} ({method})", None if size < 0 else int(size), parent or None)
        run = rows[(rows["method"] == method) & (rows["_size"] == size) & (rows["_parent"] == parent)]
        for eval_set in eval_sets:
            part = run[run["eval_set"] == eval_set]
            if part.empty:
                continue
            title = f"{eval_set} · {part['relation'].iloc[0]}"
            title += "" if formats[eval_set] == "default" else f" ({formats[eval_set]})"
            if len(variants) > 1:
                title += f"\n{name}"
            panels.append((title, str(part["metric"].iloc[0]), part))
    # One run configuration: the title names it (its parent, size); several: each row of panels does.
    title = f"Forgetting curve: {name if len(variants) == 1 else train_task}"
    _checkpoint_curves(panels, "ft_step", "fine-tuning step", title, path, ncols=len(eval_sets))


def plot_dissect_components(components: pd.DataFrame, x: str, path: str | os.PathLike) -> None:
    """The Dissecting components (facts, topic, style, other) against the train size or the fine-tuning step.

    ``x = "train_size"``: the final models (last ``ft_step`` of their run) against their train
    size, log scale; runs without a size are left out. ``x = "ft_step"``: the rows of runs with
    more than one step (their snapshots) against the step. One panel per component, one line per
    pre-training checkpoint averaged over lrs and seeds (:func:`_checkpoint_curves`); runs that
    differ in method or parent (and, against the step, in train size) are rows of panels of their own.
    """
    if x not in ("train_size", "ft_step"):
        raise ValueError(f"plot_dissect_components: x is train_size or ft_step, not {x!r}")
    rows = _with_run_columns(components)
    if x == "train_size":
        rows, variant_keys = final_rows(rows), ["method", "_parent"]
    else:
        run = ["checkpoint", "train_task", "method", "lr", "seed", "_size", "_parent"]
        steps = rows.groupby(run, dropna=False, sort=False)["ft_step"].transform("nunique")
        rows, variant_keys = rows[steps > 1], ["method", "_size", "_parent"]
    rows = rows[rows[x].notna() & rows["step"].notna()]
    if rows.empty:
        raise ValueError(f"plot_dissect_components: no component rows with more than one {x}")
    names = sorted(rows["component"].unique(), key=lambda c: (FACTOR_ORDER.get(c, len(FACTOR_ORDER)), c))
    variants = list(rows.groupby(variant_keys, sort=True).groups)
    panels = []
    for variant in variants:
        key = dict(zip(variant_keys, variant, strict=True))
        size = key.get("_size", -1)
        name = run_label(str(key["method"]), None if size < 0 else int(size), key["_parent"] or None)
        run = rows[(rows[variant_keys] == pd.Series(key)).all(axis=1)]
        for component in names:
            part = run[run["component"] == component]
            if not part.empty:
                title = component if len(variants) == 1 else f"{component}\n{name}"
                panels.append((title, "Δ per-token log-likelihood", part))
    what = "train size" if x == "train_size" else "fine-tuning step"
    _checkpoint_curves(panels, x, what, f"Split of the original's change by {what}", path, ncols=len(names),
                       log_x=x == "train_size")  # fmt: skip


def _checkpoint_curves(panels: list[tuple[str, str, pd.DataFrame]], x: str, xlabel: str, title: str,
                       path: str | os.PathLike, ncols: int | None = None, log_x: bool = False) -> None:  # fmt: skip
    """Panels ``(title, ylabel, rows)`` of one line per pre-training checkpoint against ``x``.

    Each line is :func:`_line` of a checkpoint's rows (lrs and seeds averaged, the seed spread or
    the bootstrap interval as its band); its color is the checkpoint's place in step order, the
    same in every panel, and the legend below names the checkpoints.
    """
    if not panels:
        raise ValueError(f"{title}: nothing to draw")
    ncols = ncols if ncols is not None and ncols <= MAX_ROW_COLUMNS else MAX_COLUMNS
    colors = _checkpoint_colors(pd.concat([rows for _, _, rows in panels]))
    with _grid(len(panels), ncols) as (fig, axes, ncols):
        for i, ax in _panels(axes, len(panels)):
            panel_title, ylabel, rows = panels[i]
            for checkpoint, color in colors.items():
                part = rows[rows["checkpoint"] == checkpoint]
                if not part.empty:
                    _line(ax, part, color, "-", "o", checkpoint, x=x)
            ax.set_title(panel_title)
            ax.set_ylabel(ylabel)
            if log_x:  # few, spread values (train sizes): each labelled, as it is
                ticks = sorted(rows[x].dropna().unique().astype(float))
                ax.set_xscale("log")
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.minorticks_off()
            else:
                _format_step_axis(ax)
            if i + ncols >= len(panels):
                ax.set_xlabel(xlabel)
        fig.suptitle(title)
        handles = _legend_entries(axes)
        _legend_below(fig, [handles[c] for c in colors if c in handles], [c for c in colors if c in handles],
                      max_columns=4)  # fmt: skip
        _save(fig, path)


def _checkpoint_colors(rows: pd.DataFrame) -> dict:
    """checkpoint -> color along :data:`CHECKPOINT_CMAP` in pre-training step order (no step: last)."""
    steps = rows.groupby("checkpoint", sort=False)["step"].min()
    order = sorted(steps.index, key=lambda c: (pd.isna(steps[c]), 0 if pd.isna(steps[c]) else int(steps[c]), c))
    cmap = plt.get_cmap(CHECKPOINT_CMAP)
    return {c: cmap(CHECKPOINT_CMAP_SPAN * i / max(1, len(order) - 1)) for i, c in enumerate(order)}


def plot_format_sensitivity(perf: pd.DataFrame, eval_sets: list[str], path: str | os.PathLike) -> None:
    """Score per pre-training step in each prompt format, one panel per eval set.

    Color says the format; the base checkpoints are dashed, the models fine-tuned in-domain
    (averaged over training runs) solid. Eval sets scored in a single format are skipped.
    """
    rows = perf[perf["step"].notna() & perf["eval_set"].isin(eval_sets)]
    rows = rows[(rows["method"] == "base") | (rows["relation"] == "in-domain")]
    panels = [e for e in eval_sets if rows.loc[rows["eval_set"] == e, "format"].nunique() > 1]
    if not panels:
        raise ValueError("plot_format_sensitivity: no eval set is scored in more than one format")
    with _grid(len(panels)) as (fig, axes, ncols):
        for i, ax in _panels(axes, len(panels)):
            panel = rows[rows["eval_set"] == panels[i]]
            for (fmt, is_base), group in panel.groupby(["format", panel["method"] == "base"], sort=True):
                by_step = group.groupby("step", sort=True)["value"].mean()
                kind = "base" if is_base else "fine-tuned"
                ax.plot(by_step.index.to_numpy(dtype=float), by_step.to_numpy(dtype=float),
                        color=FORMAT_COLORS.get(fmt), linestyle="--" if is_base else "-",
                        marker="s" if is_base else "o", label=f"{fmt}, {kind}")  # fmt: skip
            ax.set_title(f"{panels[i]} · {panel['metric'].iloc[0]}")
            ax.set_ylabel(panel["metric"].iloc[0])
            if i + ncols >= len(panels):
                ax.set_xlabel("pre-training step")
            _format_step_axis(ax)
        handles = _legend_entries(axes)
        order = sorted(handles, key=lambda label: (label.endswith("fine-tuned"), label))
        _legend_below(fig, [handles[k] for k in order], order, max_columns=3)
        _save(fig, path)


def plot_learning_dynamics(probes: pd.DataFrame, title: str, path: str | os.PathLike) -> None:
    """Mean summed log-probability of each probe response type over fine-tuning steps.

    ``probes``: the runs' ``probes.parquet`` rows with a ``panel`` column (one panel each, e.g.
    the checkpoint), in the order panels should appear. Each line is one response type, averaged
    over the probe examples (Ren & Sutherland's curves), in its style of :func:`response_styles`.
    """
    if probes.empty:
        raise ValueError(f"plot_learning_dynamics: no probe rows for {title}")
    panels = list(dict.fromkeys(probes["panel"]))
    styles = response_styles(probes["response_type"].unique())
    with _grid(len(panels)) as (fig, axes, ncols):
        for i, ax in _panels(axes, len(panels)):
            panel = probes[probes["panel"] == panels[i]]
            mean = panel.groupby(["response_type", "step"], sort=True)["logp"].mean()
            for t, (color, linestyle) in styles.items():
                if t in mean.index.get_level_values(0):
                    curve = mean.loc[t]
                    ax.plot(curve.index.to_numpy(dtype=float), curve.to_numpy(dtype=float), color=color,
                            linestyle=linestyle, label=t)  # fmt: skip
            ax.set_title(str(panels[i]))
            ax.set_ylabel("log p(response)")
            if i + ncols >= len(panels):
                ax.set_xlabel("fine-tuning step")
        fig.suptitle(title)
        handles = _legend_entries(axes)
        _legend_below(fig, list(handles.values()), list(handles), max_columns=4)
        _save(fig, path)


# Learning-dynamics response types (Ren & Sutherland): a family's colour, its variants' line styles; the
# same in every panel and figure. Types not listed get the colours of EXTRA_RESPONSE_COLORS in name order.
RESPONSE_STYLES = {
    "chosen": ("tab:blue", "-"),
    "chosen_semantic": ("tab:blue", "--"),
    "chosen_format": ("tab:blue", ":"),
    "rejected": ("tab:red", "-"),
    "rejected_semantic": ("tab:red", "--"),
    "rejected_format": ("tab:red", ":"),
    "argmax": ("black", "-"),
    "initial": ("tab:gray", "-"),
    "irrelevant_train": ("tab:green", "-"),
    "irrelevant_test": ("tab:green", "--"),
    "random_sentence": ("tab:purple", "-"),
    "shuffled_chosen": ("tab:orange", "-"),
    "shuffled_test": ("tab:orange", "--"),
    # The built-in probe set's.
    "gold": ("tab:blue", "-"),
    "other_label": ("tab:red", "-"),
    "other_response": ("tab:green", "-"),
    "shuffled_gold": ("tab:orange", "-"),
}
EXTRA_RESPONSE_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan")
# The columns of a task's learning-dynamics grid: runs from the checkpoint first, in this method order.
DYNAMICS_METHOD_ORDER = ("full", "extend", "lora", "lpft", "instruct", "dpo")
DYNAMICS_PANEL_SIZE = (3.0, 2.3)


def response_styles(types) -> dict[str, tuple]:
    """response type -> (colour, line style) of ``types``, in legend order (:data:`RESPONSE_STYLES`, then by name)."""
    types = set(types)
    out = {t: style for t, style in RESPONSE_STYLES.items() if t in types}
    for i, t in enumerate(sorted(types - set(RESPONSE_STYLES))):
        out[t] = (
            EXTRA_RESPONSE_COLORS[i % len(EXTRA_RESPONSE_COLORS)],
            ("-", "--", ":")[i // len(EXTRA_RESPONSE_COLORS) % 3],
        )
    return out


def _dynamics_columns(rows: pd.DataFrame, task: str) -> list[tuple[tuple, str]]:
    """The grid's columns: (key, label) per (method, parent configuration, train size, lr) group, in order.

    The label is the method, ``← <parent's method>`` (``← <task> (<method>)`` for a parent of another
    task), the train size where the task's runs differ in it and the lr where a group's runs do.
    """
    keys = rows[["method", "_parent", "_size", "lr"]].drop_duplicates()
    several_sizes = rows["_size"].nunique() > 1
    lrs = keys.groupby(["method", "_parent", "_size"], dropna=False)["lr"].nunique(dropna=False)
    columns = []
    for method, parent, size, lr in keys.itertuples(index=False):
        label = method
        if size >= 0 and several_sizes:
            label += f" n={size}"
        if lrs[(method, parent, size)] > 1:
            label += f" lr {lr:g}" if pd.notna(lr) else " lr selected"
        if parent:
            of = parent_label(parent)
            label += f" ← {of[len(task) + 2 : -1] if of.startswith(f'{task} (') and of.endswith(')') else of}"
        order = DYNAMICS_METHOD_ORDER.index(method) if method in DYNAMICS_METHOD_ORDER else len(DYNAMICS_METHOD_ORDER)
        # A child's column follows its parent's method order: dpo ← full before dpo ← extend.
        after = min((i for i, m in enumerate(DYNAMICS_METHOD_ORDER) if f"/{m}/" in (parent or "")), default=99)
        columns.append(((bool(parent), order, after, method, parent, size, -1.0 if pd.isna(lr) else float(lr)),
                        (method, parent, size, lr), label))  # fmt: skip
    return [(key, label) for _, key, label in sorted(columns, key=lambda c: c[0])]


def plot_learning_dynamics_grid(table: pd.DataFrame, task: str, path: str | os.PathLike) -> None:
    """The learning dynamics of one training task's probe runs, from the ``learning_dynamics`` table's rows.

    A row of panels per pre-training checkpoint (in step order), a column per (method, parent) group
    (:func:`_dynamics_columns`); in each panel one line per response type against ``ft_step``, its
    style the same in every panel (:func:`response_styles`). A line averages its runs' seeds: the band
    is ± one standard deviation over seeds where there are several, else the bootstrap interval (:func:`_line`).
    """
    rows = _with_run_columns(table)
    if rows.empty:
        raise ValueError(f"plot_learning_dynamics_grid: no learning-dynamics rows of task {task!r}")
    rows = rows.rename(columns={"mean": "value"})
    checkpoints = list(_checkpoint_colors(rows))
    columns = _dynamics_columns(rows, task)
    styles = response_styles(rows["response_type"].unique())
    size = (DYNAMICS_PANEL_SIZE[0] * len(columns), DYNAMICS_PANEL_SIZE[1] * len(checkpoints) + 0.6)
    with _figure(nrows=len(checkpoints), ncols=len(columns), figsize=size, squeeze=False) as (fig, axes):
        for r, checkpoint in enumerate(checkpoints):
            for c, ((method, parent, size_, lr), label) in enumerate(columns):
                ax = axes[r, c]
                part = rows[(rows["checkpoint"] == checkpoint) & (rows["method"] == method)
                            & (rows["_parent"] == parent) & (rows["_size"] == size_)
                            & ((rows["lr"] == lr) if pd.notna(lr) else rows["lr"].isna())]  # fmt: skip
                if r == 0:
                    ax.set_title(label)
                if c == 0:
                    ax.set_ylabel(f"{checkpoint}\nlog p(response)")
                if part.empty:
                    ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes, color="tab:gray")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    continue
                for t, (color, linestyle) in styles.items():
                    curve = part[part["response_type"] == t]
                    if not curve.empty:
                        _line(ax, curve, color, linestyle, None, t, x="ft_step")
                _format_step_axis(ax)
                if r == len(checkpoints) - 1:
                    ax.set_xlabel("fine-tuning step")
        fig.suptitle(f"Learning dynamics: {task}")
        handles = _legend_entries(axes)
        _legend_below(fig, [handles[t] for t in styles if t in handles], [t for t in styles if t in handles],
                      max_columns=5)  # fmt: skip
        _save(fig, path)


def plot_method_accuracy(perf: pd.DataFrame, path: str | os.PathLike) -> None:
    """The LP-FT study's accuracy figure: a panel per (checkpoint, eval set), a bar per method, the mean over
    seeds of the eval set's primary metric with ± one standard deviation over seeds."""
    rows = primary_metric_rows(perf)
    groups = rows.groupby(["checkpoint", "eval_set", "method"], sort=False)["value"]
    stats = groups.agg(["mean", "std", "count"]).reset_index()
    panels = list(dict.fromkeys(zip(stats["checkpoint"], stats["eval_set"], strict=True)))
    methods = list(dict.fromkeys(stats["method"]))
    cycle = plt.get_cmap("tab10").colors
    with _grid(len(panels)) as (fig, axes, _):
        for i, ax in _panels(axes, len(panels)):
            checkpoint, eval_set = panels[i]
            part = stats[(stats["checkpoint"] == checkpoint) & (stats["eval_set"] == eval_set)].set_index("method")
            means = [part["mean"].get(m, np.nan) for m in methods]
            spread = [part["std"].get(m, np.nan) for m in methods]
            ax.bar(range(len(methods)), means, yerr=np.nan_to_num(spread), capsize=3,
                   color=[cycle[k % len(cycle)] for k in range(len(methods))])  # fmt: skip
            ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
            metric = rows.loc[rows["eval_set"] == eval_set, "metric"].iloc[0]
            ax.set_title(f"{eval_set} · {checkpoint}")
            ax.set_ylabel(metric)
        _save(fig, path)


def plot_feature_change(features: pd.DataFrame, path: str | os.PathLike) -> None:
    """Feature change against the head's norm when training began, a point per run and eval set, by method."""
    wide = features.pivot_table(index=["checkpoint", "train_task", "method", "lr", "seed", "eval_set"],
                                columns="metric", values="value").reset_index()  # fmt: skip
    cycle = plt.get_cmap("tab10").colors
    with _figure(figsize=PANEL_SIZE) as (fig, ax):
        for k, (method, part) in enumerate(wide.groupby("method", sort=False)):
            ax.scatter(part["head_norm_start"], part["feature_change"], s=18, color=cycle[k % len(cycle)],
                       label=method)  # fmt: skip
        ax.set_xlabel("head norm at the start of training (‖W‖_F)")
        ax.set_ylabel("feature change (mean ‖f − f₀‖)")
        ax.legend(frameon=False)
        _save(fig, path)


def plot_reliability(bins: pd.DataFrame, eval_set: str, path: str | os.PathLike) -> None:
    """Reliability diagrams of one eval set: a panel per method, accuracy against confidence per bin, before and
    after temperature scaling, the seeds' runs pooled (counts add up, accuracy and confidence count-weighted)."""
    bins = bins.assign(correct=bins["accuracy"].fillna(0) * bins["count"],
                       conf=bins["confidence"].fillna(0) * bins["count"])  # fmt: skip
    pooled = bins.groupby(["method", "scaling", "bin_low", "bin_high"], sort=False)[["count", "correct", "conf"]].sum()
    pooled = pooled.reset_index()
    methods = list(dict.fromkeys(pooled["method"]))
    with _grid(len(methods)) as (fig, axes, _):
        for i, ax in _panels(axes, len(methods)):
            part = pooled[pooled["method"] == methods[i]]
            ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle=":")
            for scaling, style in (("before", "-o"), ("after", "--s")):
                rows = part[(part["scaling"] == scaling) & (part["count"] > 0)]
                ax.plot(rows["conf"] / rows["count"], rows["correct"] / rows["count"], style, markersize=3,
                        label=f"{scaling} temperature scaling")  # fmt: skip
            ax.set_title(f"{methods[i]} · {eval_set}")
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        entries = _legend_entries(axes)
        _legend_below(fig, list(entries.values()), list(entries))
        _save(fig, path)


def _model_label(row) -> str:
    if row["method"] == "base" or pd.isna(row["train_task"]) or row["train_task"] == "none":
        return f"base {row['checkpoint']}"
    label = f"{row['train_task']} ({row['method']}, lr {row['lr']:g})"
    return f"{label} ← {row['parent'].split('/')[1]}" if isinstance(row["parent"], str) else label


def _seed_mean(rows: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per model group (the label) and ``x``: mean and standard deviation over seeds."""
    rows = rows.assign(label=[_model_label(r) for _, r in rows.iterrows()])
    return rows.groupby(["label", x], sort=False)["value"].agg(["mean", "std"]).reset_index()


def _mean_lines(ax, stats: pd.DataFrame, x: str) -> None:
    cycle = plt.get_cmap("tab10").colors
    for k, (label, part) in enumerate(stats.groupby("label", sort=False)):
        style = "--" if label.startswith("base ") else "-"
        color = cycle[k % len(cycle)]
        ax.plot(part[x], part["mean"], style, marker="o", markersize=3, color=color, label=label)
        spread = part["std"].fillna(0)
        ax.fill_between(part[x], part["mean"] - spread, part["mean"] + spread, color=color, alpha=0.15, linewidth=0)


def plot_layer_probes(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Linear-probe accuracy against layer, a panel per target, a line per model group (mean ± sd over seeds)."""
    targets = list(dict.fromkeys(table["target"]))
    with _grid(len(targets)) as (fig, axes, _):
        for i, ax in _panels(axes, len(targets)):
            part = table[table["target"] == targets[i]]
            _mean_lines(ax, _seed_mean(part, "layer"), "layer")
            chance = part["chance"].dropna()
            if len(chance):
                ax.axhline(chance.iloc[0], color="0.6", linewidth=0.8, linestyle=":")
            ax.set_title(f"probe target: {targets[i]}")
            ax.set_xlabel("layer (0 = embeddings)")
            ax.set_ylabel("probe accuracy")
            ax.set_ylim(0, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        entries = _legend_entries(axes)
        _legend_below(fig, list(entries.values()), list(entries))
        _save(fig, path)


def plot_pruning(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Score against the number of pruned neurons K, a panel per eval set (primary metric, mean ± sd over seeds)."""
    table = table.drop_duplicates(["model", "k", "eval_set"]) if "model" in table else table
    sets = list(dict.fromkeys(table["eval_set"]))
    with _grid(len(sets)) as (fig, axes, _):
        for i, ax in _panels(axes, len(sets)):
            part = table[table["eval_set"] == sets[i]]
            part = part[part["metric"] == part["metric"].iloc[0]]
            _mean_lines(ax, _seed_mean(part, "k"), "k")
            ax.set_title(f"{sets[i]} with the top-K neurons zeroed")
            ax.set_xlabel("pruned neurons K")
            ax.set_ylabel(part["metric"].iloc[0])
        entries = _legend_entries(axes)
        _legend_below(fig, list(entries.values()), list(entries))
        _save(fig, path)


def plot_reverse(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """The pre-training task's score along reverse fine-tuning against the scratch + FT baseline."""
    with _figure(figsize=PANEL_SIZE) as (fig, ax):
        stats = _seed_mean(table.assign(method=table["role"] + " " + table["method"]), "ft_step")
        _mean_lines(ax, stats, "ft_step")
        if len(table):
            ax.axhline(table["threshold"].iloc[0], color="0.6", linewidth=0.8, linestyle=":")
            ax.set_title(f"{table['eval_set'].iloc[0]} along reverse fine-tuning")
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel("score")
        ax.legend(frameon=False, fontsize="small")
        _save(fig, path)


def _draw_base_vs_finetuned(
    ax, perf: pd.DataFrame, eval_set: str, format: str, colors: dict, relation: str | None = None
) -> str:
    rows = perf[(perf["eval_set"] == eval_set) & (perf["format"] == format) & perf["step"].notna()]
    if rows.empty:
        raise ValueError(f"no performance rows with a step for eval_set {eval_set!r}, format {format!r}")
    metrics = sorted(rows["metric"].unique())
    if len(metrics) > 1:
        raise ValueError(f"eval_set {eval_set!r} has several metrics {metrics}; filter perf to one")
    metric = metrics[0]

    base = rows[rows["method"] == "base"]
    if not base.empty:
        _line(ax, base, color="black", linestyle="--", marker="s", label="base")
    finetuned = _with_run_columns(rows[rows["method"] != "base"])
    if relation is not None:
        finetuned = finetuned[finetuned["relation"] == relation]
    # Decided over the whole study, not the panel: a task is named the same in every panel,
    # so a shared legend has one entry per (task, method, size, parent).
    several_methods = perf.loc[perf["method"] != "base", "method"].nunique() > 1
    styles = _variant_styles(perf, colors)
    for (task, method, size, parent), group in finetuned.groupby(RUN_COLUMNS, sort=True):
        relation = group["relation"].iloc[0]
        size, parent = (None if size < 0 else int(size)), (parent or None)
        name = run_label(f"{task} ({method})" if several_methods else task, size, parent)
        color, marker = styles[(task, size, parent)]
        style = METHOD_LINESTYLES.get(method, "-")
        _line(ax, group, color=color, linestyle=style, marker=marker, label=f"{name} [{relation}]")

    title = eval_set if format == "default" else f"{eval_set} ({format})"
    ax.set_title(f"{title} · {metric}")
    _format_step_axis(ax)
    return metric


def _line(ax, rows: pd.DataFrame, color, linestyle, marker: str, label: str, x: str = "step") -> None:
    """One line of ``rows`` against ``x`` (rows without one are left out), with a band.

    At each ``x`` each seed's value is the mean of its rows (e.g. the lrs of a grid), and the line
    the mean over seeds. The band: with more than one seed there, mean ± one sample standard
    deviation over seeds (the seed spread); with one seed (a base model, a single run), the mean
    of its rows' ``ci_low``/``ci_high`` (their bootstrap intervals).
    """
    rows = rows[rows[x].notna()]
    seed = rows["seed"] if "seed" in rows else pd.Series(pd.NA, index=rows.index, dtype="Int64")
    per_seed = rows.assign(_seed=seed).groupby([x, "_seed"], sort=True, dropna=False)
    per_seed = per_seed[["value", "ci_low", "ci_high"]].mean()
    by_x = per_seed.groupby(level=x, sort=True)
    mean, std, n_seeds = by_x["value"].mean(), by_x["value"].std(), by_x["value"].size()
    spread = (n_seeds > 1).to_numpy()
    low = np.where(spread, (mean - std).to_numpy(dtype=float), by_x["ci_low"].mean().to_numpy(dtype=float))
    high = np.where(spread, (mean + std).to_numpy(dtype=float), by_x["ci_high"].mean().to_numpy(dtype=float))
    xs = mean.index.to_numpy(dtype=float)
    ax.fill_between(xs, low, high, color=color, alpha=BAND_ALPHA, linewidth=0)
    ax.plot(xs, mean.to_numpy(dtype=float), color=color, linestyle=linestyle, marker=marker, label=label)


# A line's run beyond its task and method, as plain keys a groupby keeps: size -1 and parent "" for none.
RUN_COLUMNS = ["train_task", "method", "_size", "_parent"]


def _with_run_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``_size`` (train size, -1 for none) and ``_parent`` (the parent's configuration, the same at
    every checkpoint and seed: :func:`ptft.analysis.runs.parent_config`; "" for none)."""
    rows = with_run_axes(rows)
    return rows.assign(_size=rows["train_size"].fillna(-1).astype("int64"),
                       _parent=parent_runs(rows["parent"], parent_config).fillna("").astype(str))  # fmt: skip


def _variant_styles(perf: pd.DataFrame, colors: dict) -> dict:
    """(task, size, parent run) -> (color, marker) of each fine-tuned run configuration of the study.

    A task's color, lighter for its smaller train sizes (where it has several); marker ``o`` for
    runs from the pre-training checkpoint, one of :data:`PARENT_MARKERS` per parent run.
    """
    runs = _with_run_columns(perf[perf["method"] != "base"])
    styles = {}
    for task, group in runs.groupby("train_task", sort=True):
        sizes = sorted(s for s in group["_size"].unique() if s >= 0)
        parents = sorted(p for p in group["_parent"].unique() if p)
        for size, parent in group[["_size", "_parent"]].drop_duplicates().itertuples(index=False):
            size, parent = (None if size < 0 else int(size)), (parent or None)
            color = colors.get(task, "tab:gray")
            if size is not None and len(sizes) > 1:
                color = _lighten(color, SIZE_LIGHTEN * (len(sizes) - 1 - sizes.index(size)) / (len(sizes) - 1))
            marker = "o" if parent is None else PARENT_MARKERS[parents.index(parent) % len(PARENT_MARKERS)]
            styles[(task, size, parent)] = (color, marker)
    return styles


def _lighten(color, amount: float) -> tuple:
    """``color`` blended toward white by ``amount`` (0: itself, 1: white)."""
    return tuple(c + (1.0 - c) * amount for c in to_rgb(color))


def _legend_below(fig, handles, labels, max_columns: int = 3) -> None:
    # Below the axes, outside them: it never covers data and keeps the panel width.
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), max_columns), frameon=False)


def _task_label(label: str) -> str:
    return label.split(" [", 1)[0]


def _task_colors(perf: pd.DataFrame) -> dict:
    # One color per train task across every panel and figure of a study.
    tasks = sorted(t for t in perf.loc[perf["method"] != "base", "train_task"].unique())
    cycle = plt.get_cmap("tab10").colors
    return {task: cycle[i % len(cycle)] for i, task in enumerate(tasks)}


def _format_step_axis(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(_step_label))


def _step_label(x: float, _pos) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


@contextmanager
def _grid(n_panels: int, ncols: int | None = None):
    """Yield ``(fig, axes, ncols)``: ``n_panels`` small panels, ``ncols`` (default ``MAX_COLUMNS``) a row."""
    ncols = min(ncols or MAX_COLUMNS, n_panels)
    nrows = math.ceil(n_panels / ncols)
    size = (PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows + 0.4)
    with _figure(nrows=nrows, ncols=ncols, figsize=size, squeeze=False) as (fig, axes):
        yield fig, axes, ncols


def _panels(axes, n: int):
    """``(i, ax)`` of the first ``n`` panels of a grid; the others are hidden."""
    for i, ax in enumerate(axes.flat):
        if i < n:
            yield i, ax
        else:
            ax.set_visible(False)


def _legend_entries(axes, key=lambda label: label) -> dict:
    """One handle per legend entry (``key`` of its label) over every panel, first seen first."""
    entries = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(key(label), handle)
    return entries


@contextmanager
def _figure(**subplots_kw):
    """Yield ``(fig, axes)`` in the house style; the figure is closed even if drawing fails."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(layout="constrained", **subplots_kw)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def _save(fig, path: str | os.PathLike) -> None:
    """``path`` (PNG) and the same name with ``.svg``; text stays text in the SVG."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    with plt.rc_context({"svg.fonttype": "none"}), atomic_path(Path(path).with_suffix(".svg")) as tmp:
        fig.savefig(tmp, format="svg", bbox_inches="tight")
