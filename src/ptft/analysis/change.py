"""Change after fine-tuning per checkpoint (Amuro & Char Table 6 / Figure 4), split by the eval
sets learned during pre-training; definitions in :mod:`ptft.aggregate.change` and
:mod:`ptft.analysis.pretraining`."""

from __future__ import annotations

from ptft.aggregate.change import change_after_finetuning, change_slope
from ptft.analysis.pretraining import learned_during_pretraining
from ptft.analysis.registry import Analysis, Table, register


def learned_table(perf, settings):
    """The rule's table; where the study names the learned sets, ``learned`` says whether each is named."""
    table = learned_during_pretraining(perf, settings["figure_format"], settings["learned_min_gain"])
    named = settings.get("learned_during_pretraining")
    if named is not None:
        table["learned"] = table["eval_set"].isin(named)
    return table


def change_table(perf, settings):
    return change_after_finetuning(perf, settings["figure_format"], learned_table(perf, settings))


def slope_table(perf, settings):
    return change_slope(change_table(perf, settings))


def _plot(inputs, settings, spec, out) -> None:
    import pandas as pd

    from ptft.aggregate import figures

    figures.plot_average_change(change_table(pd.read_parquet(inputs["performance"][0]), settings),
                                out / "average_change.png")  # fmt: skip


register(
    Analysis(
        name="change",
        # Changes are over the base checkpoint's rows: none where no base model is scored (classifier studies).
        applies=lambda plan: plan.base_scored,
        category="Change after fine-tuning",
        tables=(
            Table(
                "change_per_checkpoint",
                "Average change after fine-tuning per checkpoint and relation (in-domain, OOD, cross-task): "
                "``avg_diff`` is the mean of (fine-tuned − base), ``avg_ratio_pct`` the mean of "
                "(fine-tuned − base) / base × 100 over all (training task, eval set) pairs, in the figure format, "
                "split by whether the eval set was learned during pre-training (``learned``; see that table). "
                "Every fine-tuned model is paired with the base model of its pre-training checkpoint, those of "
                "every train size and those started from another run (``parent``) included.",
                change_table,
            ),
            Table(
                "change_slope",
                "Trend of the average change over pre-training, per relation and learned split, per 100k "
                "pre-training steps: ``kind = fit``, the least-squares slope of ``avg_diff`` and "
                "``avg_ratio_pct`` against the step; ``kind = consecutive``, per checkpoint the change from "
                "the previous checkpoint (the paper's Table 6 column). Defined in ``ptft.aggregate.change``.",
                slope_table,
            ),
            Table(
                "learned_during_pretraining",
                "Eval sets learned during pre-training: an eval set is learned when the base model's score at "
                "the last checkpoint exceeds the first checkpoint's by at least ``aggregate.learned_min_gain`` "
                "(absolute, 0.05 by default), in the figure format, or, where the study names them "
                "(``aggregate.learned_during_pretraining``), when it is named. Defined in "
                "``ptft.analysis.pretraining``.",
                learned_table,
            ),
        ),
        figure_caption="Average raw change of the metric after fine-tuning (fine-tuned − base) at each "
        "pre-training checkpoint, one line per relation of eval set to training task.",
        figures=lambda plan: ["average_change"],
        plot=_plot,
    )
)
