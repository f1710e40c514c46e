"""Performance across checkpoints: the performance table and base-vs-fine-tuned figures."""

from __future__ import annotations

from ptft.analysis.registry import Analysis, Table, register


def _figures(plan) -> list[str]:
    return ["base_vs_finetuned", *(f"base_vs_finetuned_{e}" for e in plan.eval_sets)]


def _plot(inputs, settings, spec, out) -> None:
    import pandas as pd

    from ptft.aggregate import figures

    perf = figures.primary_metric_rows(pd.read_parquet(inputs["performance"][0]))
    fmt = settings["figure_format"]
    for eval_set in spec["eval_sets"]:
        figures.plot_base_vs_finetuned(perf, eval_set, fmt, out / f"base_vs_finetuned_{eval_set}.png")
    figures.plot_base_vs_finetuned_grid(perf, spec["eval_sets"], fmt, out / "base_vs_finetuned.png")


register(
    Analysis(
        name="performance",
        category="Performance across checkpoints",
        tables=(
            Table(
                "performance",
                "One row per model, eval set, prompt format and metric: the mean per-example score with its "
                "seeded percentile-bootstrap interval (``ci_low``, ``ci_high``) over ``n`` scored examples. "
                "Base checkpoints are scored few-shot, fine-tuned models zero-shot. Columns follow the "
                "result-table contract of docs/architecture.md.",
            ),
        ),
        figure_caption="Base (dashed, few-shot) and fine-tuned (zero-shot, one line per training task; line style "
        "the method, where several) performance across the pre-training checkpoints. Runs of a task at several "
        "train sizes (n=…, lighter for smaller) or started from another run (← task (method), another marker) are "
        "lines of their own. Lines average the lrs and seeds of a run; bands are ± one standard deviation over "
        "seeds where a line has several, else the (mean) 95 % bootstrap interval. On the tasks whose "
        "pattern occurs in the pre-training corpus the base curve rises over checkpoints; on the others it "
        "stays near chance until the model is fine-tuned.",
        figures=_figures,
        plot=_plot,
        spec=lambda plan: {"eval_sets": list(plan.eval_sets)},
    )
)
