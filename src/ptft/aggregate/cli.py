"""``ptft`` sub-commands of the aggregation stage: the performance table, report pages, figures."""

from __future__ import annotations

from pathlib import Path

from ptft.cli_args import json_arg


def cmd_performance(a) -> None:
    from ptft import io
    from ptft.aggregate.performance import performance_table, read_predictions

    b = a.config["bootstrap"]
    perf = performance_table(
        read_predictions(a.predictions),
        io.read_json(a.manifest),
        a.study,
        b["resamples"],
        b["confidence"],
        b["seed"],
        [io.read_json(p) for p in a.selections],
    )
    io.write_parquet(a.out, perf)


def cmd_table_html(a) -> None:
    import pandas as pd

    from ptft import io
    from ptft.aggregate.report import table_html

    io.write_text(a.out, table_html(pd.read_parquet(a.table), Path(a.table).stem))


def cmd_figures(a) -> None:
    import pandas as pd

    from ptft.aggregate import figures

    perf = figures.primary_metric_rows(pd.read_parquet(a.performance))
    out = Path(a.out_dir)
    for eval_set in a.eval_sets:
        figures.plot_base_vs_finetuned(perf, eval_set, a.format, out / f"base_vs_finetuned_{eval_set}.png")
    figures.plot_base_vs_finetuned_grid(perf, a.eval_sets, a.format, out / "base_vs_finetuned.png")
    figures.plot_average_change(pd.read_parquet(a.change), out / "average_change.png")
    for relation in a.relations:
        eval_sets = sorted(perf.loc[perf["relation"] == relation, "eval_set"].unique())
        name = relation.replace("-", "_")
        figures.plot_base_vs_finetuned_grid(perf, eval_sets, a.format, out / f"{name}.png", relation=relation)
    if a.format_eval_sets:
        figures.plot_format_sensitivity(perf, a.format_eval_sets, out / "format_sensitivity.png")
    if a.probe_runs:
        _probe_figures(a.probe_runs, a.manifest, out)


def _probe_figures(runs: list[dict], manifest: str, out_dir: Path) -> None:
    """One learning-dynamics figure per (task, method), a panel per checkpoint (and lr, seed)."""
    import pandas as pd

    from ptft import io
    from ptft.aggregate import figures

    steps = {e["name"]: e.get("step") for e in io.read_json(manifest)["checkpoints"]}
    runs = pd.DataFrame(runs)
    several = runs.groupby(["task", "method"])[["lr", "seed"]].transform("nunique").max(axis=1) > 1
    for (task, method), group in runs.assign(several=several).groupby(["task", "method"], sort=True):
        group = group.assign(order=group["checkpoint"].map(steps))
        group = group.sort_values(["order", "lr", "seed"], kind="mergesort")
        parts = []
        for run in group.itertuples():
            panel = run.checkpoint + (f" · lr {run.lr:g} · seed {run.seed}" if run.several else "")
            parts.append(pd.read_parquet(run.path).assign(panel=panel))
        out = out_dir / f"learning_dynamics_{task}_{method}.png"
        figures.plot_learning_dynamics(pd.concat(parts), f"Learning dynamics: {task} ({method})", out)


def add_commands(sub) -> None:
    s = sub.add_parser("performance", help="per-example predictions -> performance.parquet")
    s.add_argument("--predictions", nargs="+", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--selections", nargs="*", default=[], help="lr selections (finetune.select_lr)")
    s.add_argument("--study", required=True)
    s.add_argument("--config", type=json_arg, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_performance)

    s = sub.add_parser("table-html", help="a Parquet table as an HTML page (for the report)")
    s.add_argument("--table", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_table_html)

    s = sub.add_parser("figures", help="every figure: performance, change, OOD, cross-task, formats, probes")
    s.add_argument("--performance", required=True)
    s.add_argument("--change", required=True)
    s.add_argument("--eval-sets", nargs="+", required=True)
    s.add_argument("--format", default="default")
    s.add_argument("--relations", nargs="*", default=[], help="one figure of each relation's fine-tuned models")
    s.add_argument("--format-eval-sets", nargs="*", default=[], help="eval sets of the format-sensitivity figure")
    s.add_argument("--probe-runs", type=json_arg, default=[], help="[{checkpoint, task, method, lr, seed, path}]")
    s.add_argument("--manifest", help="with --probe-runs: the checkpoints' steps, to order the panels")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_figures)
