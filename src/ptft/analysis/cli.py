"""``ptft`` sub-commands of the analyses (:mod:`ptft.analysis.registry`), and the import of
released results as a performance table."""

from __future__ import annotations

import sys
from pathlib import Path

from ptft.cli_args import json_arg


def cmd_analysis(a) -> None:
    from ptft.analysis import registry

    inputs = {name: files for name, *files in a.input}
    registry.run_analysis(a.name, inputs, a.config, a.spec, a.tables, a.figures)


def cmd_import_released(a) -> None:
    import yaml

    from ptft import io
    from ptft.analysis import import_released_results

    relations = yaml.safe_load(Path(a.study_config).read_text())["relations"] if a.study_config else None
    table, skipped = import_released_results(a.csv, a.study, relations, a.shots)
    print(f"imported {len(table)} rows; skipped by reason: {skipped}", file=sys.stderr)
    io.write_parquet(a.out, table, {"released_tables": [str(Path(p).resolve()) for p in a.csv]})


def add_commands(sub) -> None:
    s = sub.add_parser("analysis", help="one registered analysis: its tables and figures")
    s.add_argument("--name", required=True, help="a name of ptft.analysis.ANALYSES")
    s.add_argument("--input", nargs="+", action="append", default=[], metavar=("NAME", "FILE"),
                   help="a named input and its files, e.g. --input performance tables/performance.parquet")  # fmt: skip
    s.add_argument("--spec", type=json_arg, default={}, help="what the plan says of this analysis (figures, ...)")
    s.add_argument("--config", type=json_arg, required=True, help="the aggregate section as JSON")
    s.add_argument("--tables", nargs="*", default=[], help="where each table goes (tables/<name>.parquet)")
    s.add_argument("--figures", nargs="*", default=[], help="where each figure's PNG goes (the SVG beside it)")
    s.set_defaults(func=cmd_analysis)

    s = sub.add_parser("import-released", help="a released results table (Amuro & Char's) as a performance table")
    s.add_argument(
        "--csv", nargs="+", required=True, help="released tables: all_perf_table.csv, official_eval_table.csv, ..."
    )
    s.add_argument("--study", required=True)
    s.add_argument("--study-config", default=None, help="study YAML whose relations table to use")
    s.add_argument("--shots", type=int, default=4)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_import_released)
