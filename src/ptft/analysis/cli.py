"""``ptft`` sub-commands of the analyses: tables that are pure functions of performance.parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptft.cli_args import json_arg


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


def cmd_import_released(a) -> None:
    import yaml

    from ptft import io
    from ptft.analysis import import_released_results

    relations = yaml.safe_load(Path(a.study_config).read_text())["relations"] if a.study_config else None
    table, skipped = import_released_results(a.csv, a.study, relations, a.shots)
    print(f"imported {len(table)} rows; skipped by reason: {skipped}", file=sys.stderr)
    io.write_parquet(a.out, table)


def add_commands(sub) -> None:
    # Every analysis reads performance.parquet with the aggregate section's settings.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--performance", required=True)
    common.add_argument("--format", default="default")
    common.add_argument("--config", type=json_arg, required=True, help="the aggregate section as JSON")

    s = sub.add_parser("change", parents=[common], help="average change after fine-tuning per checkpoint")
    s.add_argument("--out", required=True)
    s.add_argument("--slope-out", required=True, help="slope of the change per 100k steps")
    s.set_defaults(func=cmd_change)

    s = sub.add_parser("mrc", parents=[common], help="mean ratio of change (cross-task and OOD transfer)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_mrc)

    s = sub.add_parser("analysis-tables", parents=[common], help="learned-during-pre-training sets, formats")
    s.add_argument("--learned", required=True)
    s.add_argument("--format-sensitivity", required=True)
    s.add_argument("--format-summary", required=True)
    s.set_defaults(func=cmd_analysis_tables)

    s = sub.add_parser("import-released", help="a released results table (Amuro & Char's) as a performance table")
    s.add_argument("--csv", required=True, help="all_perf_table.csv")
    s.add_argument("--study", required=True)
    s.add_argument("--study-config", default=None, help="study YAML whose relations table to use")
    s.add_argument("--shots", type=int, default=4)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_import_released)
