"""``ptft`` sub-commands of the aggregation stage: the performance table, report pages, figures."""

from __future__ import annotations

from pathlib import Path

from ptft.cli_args import json_arg


def cmd_performance(a) -> None:
    from ptft import io
    from ptft.aggregate.performance import performance_table, read_predictions

    b = a.config["bootstrap"]
    manifest = io.read_json(a.manifest)
    perf = performance_table(
        read_predictions([*a.predictions, *a.base]),
        manifest,
        a.study,
        b["resamples"],
        b["confidence"],
        b["seed"],
        [io.read_json(p) for p in a.selections],
    )
    if a.base:  # the trajectory table: base rows only gave the paired intervals their reference
        perf = perf[perf["method"] != "base"].reset_index(drop=True)
    io.write_parquet(a.out, perf, performance_provenance(a.predictions, manifest, set(perf["checkpoint"])))


def performance_provenance(predictions: list[str], manifest: dict, names: set[str]) -> dict:
    """The predictions' provenance, and the suite's record of each checkpoint in the table's rows
    (so the table names its checkpoints' commits even when a predictions file records none)."""
    from ptft import provenance

    listed = [provenance.checkpoint_record(p) for p in manifest.get("checkpoints", []) if p.get("name") in names]
    return provenance.of_inputs(predictions, listed)


def cmd_table_html(a) -> None:
    import pandas as pd

    from ptft import io
    from ptft.aggregate.report import table_html

    io.write_text(a.out, table_html(pd.read_parquet(a.table), Path(a.table).stem))


def add_commands(sub) -> None:
    s = sub.add_parser("performance", help="per-example predictions -> performance.parquet")
    s.add_argument("--predictions", nargs="+", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--selections", nargs="*", default=[], help="lr selections (finetune.select_lr)")
    s.add_argument("--base", nargs="*", default=[], help="base models' predictions: the reference of the paired "
                   "intervals of a trajectory table (finetune.snapshots), whose rows they do not enter")  # fmt: skip
    s.add_argument("--study", required=True)
    s.add_argument("--config", type=json_arg, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_performance)

    s = sub.add_parser("table-html", help="a Parquet table as an HTML page (for the report)")
    s.add_argument("--table", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_table_html)
