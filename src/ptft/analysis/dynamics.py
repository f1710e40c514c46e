"""Learning dynamics during fine-tuning (Ren & Sutherland 2025): the probes' log-probabilities
along training, one figure per (training task, method), a panel per checkpoint (and lr, seed,
train size and parent run, where the task's runs differ in them)."""

from __future__ import annotations

import pandas as pd

from ptft.analysis.registry import Analysis, register
from ptft.analysis.runs import parent_config, parent_label


def _parent_id(model) -> str | None:
    # getattr: plans before runs from runs have no parent; a parent is a model of the plan.
    parent = getattr(model, "parent", None)
    return None if parent is None else getattr(parent, "id", str(parent))


def _runs(plan) -> list[dict]:
    return [{"checkpoint": m.checkpoint, "task": m.train_task, "method": m.method, "lr": m.lr, "seed": m.seed,
             "train_size": getattr(m, "train_size", None), "parent": _parent_id(m), "path": plan.probes_path(m)}
            for m in plan.probe_runs]  # fmt: skip


def _panel(run, several: set[str]) -> str:
    """A run's panel title: its checkpoint, and what tells it apart from the task's other runs."""
    parts = [run.checkpoint]
    if "lr" in several:
        parts.append(f"lr {run.lr:g}")
    if "seed" in several:
        parts.append(f"seed {run.seed}")
    if "train_size" in several and pd.notna(run.train_size):
        parts.append(f"n={int(run.train_size)}")
    if "parent" in several and isinstance(run.parent, str):
        parts.append(f"← {parent_label(run.parent)}")
    return " · ".join(parts)


def _figures(plan) -> list[str]:
    return list(dict.fromkeys(f"learning_dynamics_{m.train_task}_{m.method}" for m in plan.probe_runs))


def _plot(inputs, settings, spec, out) -> None:
    from ptft import io
    from ptft.aggregate import figures

    steps = {e["name"]: e.get("step") for e in io.read_json(inputs["manifest"][0])["checkpoints"]}
    runs = pd.DataFrame(spec["runs"])
    for column in ("train_size", "parent"):  # a spec of a plan before these axes
        if column not in runs:
            runs[column] = None
    for (task, method), group in runs.groupby(["task", "method"], sort=True):
        # A child run's parent differs with its checkpoint and seed: the parent's configuration is what varies.
        axes = group.assign(parent=[parent_config(p) for p in group["parent"]])
        varying = {c for c in ("lr", "seed", "train_size", "parent") if axes[c].nunique(dropna=False) > 1}
        # lr and seed are named together, as before the other axes: a panel says which run of the grid it is.
        several = varying | ({"lr", "seed"} if varying & {"lr", "seed"} else set())
        group = group.assign(order=group["checkpoint"].map(steps))
        group = group.sort_values(["order", "train_size", "parent", "lr", "seed"], kind="mergesort")
        parts = []
        for run in group.itertuples():
            parts.append(pd.read_parquet(run.path).assign(panel=_panel(run, several)))
        path = out / f"learning_dynamics_{task}_{method}.png"
        figures.plot_learning_dynamics(pd.concat(parts), f"Learning dynamics: {task} ({method})", path)


register(
    Analysis(
        name="dynamics",
        category="Learning dynamics",
        figure_caption="Learning dynamics during fine-tuning (Ren & Sutherland 2025): every ``probes.every`` "
        "optimizer steps, the summed log-probability of each probe response type given its prompt, averaged over "
        "the probe examples; one panel per pre-training checkpoint. Built-in response types: ``gold`` (the "
        "example's own completion), ``other_label`` (a wrong label, classification), ``shuffled_gold`` (its words "
        "shuffled, generation) and ``other_response`` (another example's completion). Gold rising while the wrong "
        "label falls is the model learning the task; all rising together is it learning the output format.",
        figures=_figures,
        plot=_plot,
        applies=lambda plan: bool(plan.probe_runs),
        inputs=lambda plan: {"probes": [r["path"] for r in _runs(plan)], "manifest": [plan.manifest_path]},
        spec=lambda plan: {"runs": _runs(plan)},
    )
)
