"""``ptft`` command line: one sub-command per workflow step; each rule calls exactly one."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def cmd_toy_data(a) -> None:
    from ptft.data.prepare import write_toy_dataset
    from ptft.data.registry import get_dataset

    write_toy_dataset(get_dataset(a.dataset), a.sizes, a.seed, a.out_dir, a.held_out)


def cmd_pretrain_toy(a) -> None:
    from ptft import io
    from ptft.checkpoints.toy_pretrain import pretrain

    _threads(a.threads)
    manifest = pretrain(a.config, a.data_dirs, a.out_dir, a.state_dir, a.seed)
    io.write_json(a.manifest, manifest)


def cmd_prepare_train(a) -> None:
    from ptft import io
    from ptft.data.prepare import subsample_train
    from ptft.data.registry import get_dataset

    df = subsample_train(get_dataset(a.dataset), a.local_dir, a.size, a.seed, a.fraction, a.invalid == "skip")
    io.write_parquet(a.out, df)


def cmd_prepare_validation(a) -> None:
    from ptft import io
    from ptft.data.prepare import validation_split
    from ptft.data.registry import get_dataset

    spec = get_dataset(a.dataset)
    df = validation_split(spec, a.local_dir, a.size, a.seed, a.validation_size, a.fraction, a.invalid == "skip")
    io.write_parquet(a.out, df)


def cmd_prepare_eval(a) -> None:
    from ptft import io
    from ptft.data.prepare import eval_and_fewshot
    from ptft.data.registry import get_dataset

    scored, pool = eval_and_fewshot(
        get_dataset(a.dataset), a.local_dir, a.max_examples, a.pool_size, a.seed, a.invalid == "skip"
    )
    io.write_parquet(a.out_eval, scored)
    io.write_parquet(a.out_fewshot, pool)


def cmd_download(a) -> None:
    from ptft.download import download_checkpoint, download_dataset, download_study

    if a.configfile:
        download_study(a.configfile, a.results)
    elif a.dataset:
        download_dataset(a.dataset, a.data_dir, a.out)
    elif a.checkpoint:
        download_checkpoint(a.checkpoint, a.revisions, a.out)
    else:
        raise SystemExit("ptft download: give --configfile, or --dataset/--checkpoint with --out")


def cmd_checkpoint_manifest(a) -> None:
    from ptft import io

    io.write_json(a.out, {"suite": a.suite, "checkpoints": [io.read_json(p) for p in a.pointers]})


def cmd_finetune(a) -> None:
    from ptft.finetune.train import finetune

    _threads(a.threads)
    finetune(a.checkpoint, a.train, a.task, a.config, a.lr, a.seed, a.out_dir, a.state_dir, a.method, a.validation)


def cmd_select_lr(a) -> None:
    from ptft import io
    from ptft.finetune.select import select_lr

    io.write_json(a.out, select_lr([io.read_json(p) for p in a.summaries], a.metric, a.group))


def cmd_evaluate(a) -> None:
    from ptft import io
    from ptft.evaluate.run import evaluate_model

    _threads(a.threads)
    meta = a.model
    pointer = io.read_json(a.model_dir) if a.model_dir.endswith(".json") else {}
    if pointer.get("selected"):
        meta = {**meta, "lr": pointer["lr"]}  # a selection: its lr is known only now
    df = evaluate_model(a.model_dir, meta, a.evaluations, a.data_dir, a.config, a.seed)
    io.write_parquet(a.out, df)


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


def cmd_change(a) -> None:
    import pandas as pd

    from ptft import io
    from ptft.aggregate.change import change_after_finetuning, change_slope
    from ptft.analysis import learned_during_pretraining

    perf = pd.read_parquet(a.performance)
    learned = learned_during_pretraining(perf, a.format, a.config["learned_min_gain"])
    change = change_after_finetuning(perf, a.format, learned)
    io.write_parquet(a.out, change)
    io.write_parquet(a.slope_out, change_slope(change))


def cmd_mrc(a) -> None:
    import pandas as pd

    from ptft import io
    from ptft.analysis import mean_ratio_of_change

    boot = a.config["bootstrap"]
    perf = pd.read_parquet(a.performance)
    io.write_parquet(a.out, mean_ratio_of_change(perf, a.format, boot["resamples"], boot["confidence"], boot["seed"]))


def cmd_analysis_tables(a) -> None:
    import pandas as pd

    from ptft import io
    from ptft.analysis import format_sensitivity, format_sensitivity_summary, learned_during_pretraining

    perf = pd.read_parquet(a.performance)
    io.write_parquet(a.learned, learned_during_pretraining(perf, a.format, a.config["learned_min_gain"]))
    sensitivity = format_sensitivity(perf)
    io.write_parquet(a.format_sensitivity, sensitivity)
    io.write_parquet(a.format_summary, format_sensitivity_summary(sensitivity))


def cmd_table_html(a) -> None:
    import pandas as pd

    from ptft import io

    table = pd.read_parquet(a.table)
    html = table.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", border=0)
    style = ("<style>body{font:13px sans-serif;margin:1em} table{border-collapse:collapse} "
             "th,td{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd} th{position:sticky;top:0;"
             "background:#f4f4f4}</style>")  # fmt: skip
    title = Path(a.table).stem
    io.write_text(a.out, f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>{style}</head>"
                         f"<body><p>{title}: {len(table)} rows</p>{html}</body></html>")  # fmt: skip


def cmd_import_released(a) -> None:
    import yaml

    from ptft import io
    from ptft.analysis import import_released_results

    relations = yaml.safe_load(Path(a.study_config).read_text())["relations"] if a.study_config else None
    table, skipped = import_released_results(a.csv, a.study, relations, a.shots)
    print(f"imported {len(table)} rows; skipped by reason: {skipped}", file=sys.stderr)
    io.write_parquet(a.out, table)


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptft", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("toy-data", help="generate one toy dataset's splits")
    s.add_argument("--dataset", required=True)
    s.add_argument("--sizes", type=_json, required=True, help='{"train": n, "validation": n, "test": n}')
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--held-out", nargs="*", default=[], help="raw toy datasets whose test items a chat must avoid")
    s.set_defaults(func=cmd_toy_data)

    s = sub.add_parser("pretrain-toy", help="pre-train the toy checkpoint suite")
    s.add_argument("--config", type=_json, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--data-dirs", nargs="+", required=True, help="raw toy dataset folders (held out of the corpus)")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--state-dir", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_pretrain_toy)

    s = sub.add_parser(
        "download", help="pre-fetch a study's datasets and checkpoints into the caches (run on a login node)"
    )
    s.add_argument("--configfile", help="a study file: fetch everything it needs")
    s.add_argument("--results", default="results", help="with --configfile: where results/<study>/ goes")
    s.add_argument("--dataset", help="one dataset (registry name)")
    s.add_argument("--data-dir", default=None, help="with --dataset: local folder of its split files")
    s.add_argument("--checkpoint", type=_json, help="one suite entry (JSON, see ptft.checkpoints.hub)")
    s.add_argument("--revisions", type=_json, default=None, help='{"model", "revision_list", "manifest"} for steps')
    s.add_argument("--out", help="the record (dataset) or pointer (checkpoint) to write")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("checkpoint-manifest", help="the resolved suite: every checkpoint pointer in one file")
    s.add_argument("--pointers", nargs="+", required=True)
    s.add_argument("--suite", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_checkpoint_manifest)

    data_source = argparse.ArgumentParser(add_help=False)
    data_source.add_argument("--dataset", required=True)
    data_source.add_argument("--local-dir", default=None, help="folder of the split files (default: the hub)")
    data_source.add_argument("--invalid", choices=["error", "skip"], default="error", help="bad records")
    data_source.add_argument("--seed", type=int, required=True)

    s = sub.add_parser("prepare-train", parents=[data_source], help="subsample one training set")
    s.add_argument("--size", type=int, default=None)
    s.add_argument("--fraction", type=float, default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prepare_train)

    s = sub.add_parser("prepare-validation", parents=[data_source], help="a training task's validation split")
    s.add_argument("--size", type=int, default=None, help="training examples (as for prepare-train)")
    s.add_argument("--fraction", type=float, default=None)
    s.add_argument("--validation-size", type=int, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prepare_validation)

    s = sub.add_parser("prepare-eval", parents=[data_source], help="one eval set's scored items and few-shot pool")
    s.add_argument("--max-examples", type=_json, default=None)
    s.add_argument("--pool-size", type=int, required=True)
    s.add_argument("--out-eval", required=True)
    s.add_argument("--out-fewshot", required=True)
    s.set_defaults(func=cmd_prepare_eval)

    s = sub.add_parser("finetune", help="fine-tune one checkpoint on one task")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--train", required=True)
    s.add_argument("--task", required=True)
    s.add_argument("--config", type=_json, required=True)
    s.add_argument("--lr", type=float, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--state-dir", required=True)
    s.add_argument("--method", default="full", choices=["full", "lora", "lpft", "instruct"])
    s.add_argument("--validation", default=None, help="validation split (for the lr selection)")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("select-lr", help="pick the best learning rate of a grid by a validation metric")
    s.add_argument("--summaries", nargs="+", required=True, help="summary.json of each run of the grid")
    s.add_argument("--metric", required=True, choices=["loss", "score"])
    s.add_argument("--group", type=_json, required=True, help="{checkpoint, task, method, seed} of the grid")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_select_lr)

    s = sub.add_parser("evaluate", help="score one model on its eval sets and formats")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--model", type=_json, required=True, help="model metadata (plan.Model.metadata)")
    s.add_argument("--evaluations", type=_json, required=True, help="[{eval_set, relation, formats}] (plan)")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--config", type=_json, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("performance", help="per-example predictions -> performance.parquet")
    s.add_argument("--predictions", nargs="+", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--selections", nargs="*", default=[], help="lr selections (finetune.select_lr)")
    s.add_argument("--study", required=True)
    s.add_argument("--config", type=_json, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_performance)

    def analysis(name: str, help: str, func) -> argparse.ArgumentParser:
        """A command reading performance.parquet with the aggregate section's settings."""
        s = sub.add_parser(name, help=help)
        s.add_argument("--performance", required=True)
        s.add_argument("--format", default="default")
        s.add_argument("--config", type=_json, required=True, help="the aggregate section as JSON")
        s.set_defaults(func=func)
        return s

    s = analysis("change", "average change after fine-tuning per checkpoint, split by learned sets", cmd_change)
    s.add_argument("--out", required=True)
    s.add_argument("--slope-out", required=True, help="slope of the change per 100k steps")

    s = analysis("mrc", "mean ratio of change (cross-task and OOD transfer), with bootstrap intervals", cmd_mrc)
    s.add_argument("--out", required=True)

    s = analysis("analysis-tables", "learned-during-pre-training sets and format sensitivity", cmd_analysis_tables)
    s.add_argument("--learned", required=True)
    s.add_argument("--format-sensitivity", required=True)
    s.add_argument("--format-summary", required=True)

    s = sub.add_parser("table-html", help="a Parquet table as an HTML page (for the report)")
    s.add_argument("--table", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_table_html)

    s = sub.add_parser("import-released", help="a released results table (Amuro & Char's) as a performance table")
    s.add_argument("--csv", required=True, help="all_perf_table.csv")
    s.add_argument("--study", required=True)
    s.add_argument("--study-config", default=None, help="study YAML whose relations table to use")
    s.add_argument("--shots", type=int, default=4)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_import_released)

    s = sub.add_parser("figures", help="every figure: performance, change, OOD, cross-task, formats, probes")
    s.add_argument("--performance", required=True)
    s.add_argument("--change", required=True)
    s.add_argument("--eval-sets", nargs="+", required=True)
    s.add_argument("--format", default="default")
    s.add_argument("--relations", nargs="*", default=[], help="one figure of each relation's fine-tuned models")
    s.add_argument("--format-eval-sets", nargs="*", default=[], help="eval sets of the format-sensitivity figure")
    s.add_argument("--probe-runs", type=_json, default=[], help="[{checkpoint, task, method, lr, seed, path}]")
    s.add_argument("--manifest", help="with --probe-runs: the checkpoints' steps, to order the panels")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_figures)
    from ptft.derive.cli import add_commands

    add_commands(sub, _json)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
