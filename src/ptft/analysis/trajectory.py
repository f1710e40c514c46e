"""Performance along fine-tuning: the trajectory table, its summary over seeds and the forgetting curves.

A run that saves snapshots is scored at each of them (``ft_step`` 0, the model it starts from;
the intermediate steps; its last step), in the columns of the performance table: the table
``trajectory``, written by the aggregate stage. Its summary over seeds per snapshot step is
``trajectory_seed_summary`` (:func:`ptft.analysis.seeds.trajectory_seed_summary`). The figure
``trajectory_<train task>`` is the forgetting curve of that task's runs: the score on the task's
own and every other eval set against the fine-tuning step (:func:`ptft.aggregate.figures.plot_trajectory`).

The plan's ``snapshot_runs`` (the fine-tuned models that save snapshots) decide whether a study has this
analysis; a plan without that attribute has none.
"""

from __future__ import annotations

from ptft.analysis.registry import Analysis, Table, register
from ptft.analysis.seeds import SEED_SUMMARY_CAPTION, trajectory_seed_summary


def _snapshot_runs(plan) -> tuple:
    return tuple(getattr(plan, "snapshot_runs", ()))


def _train_tasks(plan) -> list[str]:
    return sorted({m.train_task for m in _snapshot_runs(plan)})


def _plot(inputs, settings, spec, out) -> None:
    import pandas as pd

    from ptft.aggregate import figures

    traj = figures.primary_metric_rows(pd.read_parquet(inputs["trajectory"][0]))
    for task in spec["train_tasks"]:
        figures.plot_trajectory(traj, task, settings["figure_format"], out / f"trajectory_{task}.png")


register(
    Analysis(
        name="trajectory",
        category="Performance along fine-tuning",
        tables=(
            Table(
                "trajectory",
                "The performance table of the snapshots of the fine-tuning runs that save them: one row per "
                "snapshot model, eval set, prompt format and metric, in the performance table's columns, where "
                "``ft_step`` is the optimizer steps of fine-tuning of the snapshot (0: the model the run started "
                "from, its pre-training checkpoint or, where ``parent`` names one, that run's model; then the saved "
                "steps and the last step). ``checkpoint`` is the pre-training checkpoint, ``train_size`` the run's "
                "training-set size where the study sweeps sizes. ``value`` is zero-shot with its bootstrap interval "
                "over the ``n`` examples, as in the performance table; there are no base rows.",
            ),
            Table(
                "trajectory_seed_summary",
                SEED_SUMMARY_CAPTION.format(
                    rows="trajectory row",
                    steps="A row is one snapshot step (``ft_step``) of a run.",
                ),
                trajectory_seed_summary,
                source="trajectory",
            ),
        ),
        figure_caption="Forgetting curves: the score of a training task's runs along fine-tuning (x: optimizer "
        "steps of fine-tuning; 0 is the model the run started from), one panel per eval set of the runs with its "
        "relation to the task (in-domain, OOD, cross-task), in the figure format and the eval set's primary metric; "
        "one line per pre-training checkpoint, darker to lighter from earlier to later. Lines average the lrs and "
        "seeds of a run; bands are ± one standard deviation over seeds where a line has several, else the mean 95 % "
        "bootstrap interval. Runs that differ in method, train size (n=…) or the run they started from (← task "
        "(method)) have rows of panels of their own.",
        figures=lambda plan: [f"trajectory_{t}" for t in _train_tasks(plan)],
        plot=_plot,
        applies=lambda plan: bool(_snapshot_runs(plan)),
        inputs=lambda plan: {
            "trajectory": [plan.table_path("trajectory")],
            "performance": [plan.table_path("performance")],
        },  # fmt: skip
        spec=lambda plan: {"train_tasks": _train_tasks(plan)},
    )
)
