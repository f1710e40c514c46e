"""The analyses of a study: each registers its tables, figures, captions and report category.

An analysis is one module of ``ptft.analysis`` that calls :func:`register` with an
:class:`Analysis`; adding one is that module, its test, and its name in ``MODULES`` of
``ptft/analysis/__init__.py``. The plan (``ptft.plan.Plan.analyses``) asks each registered
analysis which of its tables and figures a study has, and the workflow makes one job per
analysis (``workflow/rules/aggregate.smk``) that runs :func:`run_analysis`.

- A **table** is a pure function ``build(source, settings) -> DataFrame`` of one input table
  (its ``source``: the name of one of the analysis's ``inputs``, the performance table unless it
  says otherwise, e.g. ``source="trajectory"``) and the ``aggregate`` section, written to
  ``tables/<name>.parquet`` and shown in the report as a page with its caption. A table that
  another stage writes (``performance``, ``trajectory``, the Dissecting tables) is registered
  with ``build=None``, for its caption.
  A table whose input is many files (the runs' ``probes.parquet``) says how to read them: its
  ``load(inputs, spec)`` makes the DataFrame ``build`` is given (e.g. one row per run with its
  file) from all of the analysis's inputs and its spec; the table's provenance is then that of
  every file of its ``source``.
- A **figure** is written as ``figures/<name>.png`` and ``.svg`` by the analysis's ``plot``,
  which gets its inputs, the settings, the ``spec`` the plan made for it and the figure folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ptft.plan import Plan


def _none(_plan) -> list:
    return []


def _always(_plan) -> bool:
    return True


@dataclass(frozen=True)
class Table:
    name: str
    caption: str
    build: Callable[[pd.DataFrame, dict], pd.DataFrame] | None = None  # None: written by another rule
    applies: Callable[[Plan], bool] = _always
    source: str = "performance"  # the input (a key of the analysis's inputs) that build is given
    # Reads the source from all inputs and the spec, for a source of many files; None: its first file as Parquet.
    load: Callable[[dict[str, list[str]], dict], pd.DataFrame] | None = None


def _performance_input(plan: Plan) -> dict[str, list[str]]:
    return {"performance": [plan.table_path("performance")]}


def _no_spec(_plan) -> dict:
    return {}


@dataclass(frozen=True)
class Analysis:
    """One analysis: what it makes, where in the report, from which inputs.

    ``figures(plan)``: names of the figures this study gets (a list that depends on the study,
    e.g. one per eval set); ``spec(plan)``: what ``plot`` needs to know of the plan (JSON);
    ``inputs(plan)``: name -> files, by default the performance table.
    """

    name: str
    category: str  # the report's category
    tables: tuple[Table, ...] = ()
    figure_caption: str = ""
    figures: Callable[[Plan], list[str]] = _none
    plot: Callable[[dict[str, list[str]], dict, dict, Path], None] | None = None
    applies: Callable[[Plan], bool] = _always
    inputs: Callable[[Plan], dict[str, list[str]]] = _performance_input
    spec: Callable[[Plan], dict[str, Any]] = _no_spec

    @property
    def built_here(self) -> tuple[str, ...]:
        """Its tables that it computes from an input table (the others are another rule's)."""
        return tuple(t.name for t in self.tables if t.build is not None)

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


ANALYSES: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    for other in ANALYSES.values():
        if other.name != analysis.name and {t.name for t in other.tables} & {t.name for t in analysis.tables}:
            raise ValueError(f"analysis {analysis.name!r}: a table name is already registered by {other.name!r}")
    ANALYSES[analysis.name] = analysis
    return analysis


def get_analysis(name: str) -> Analysis:
    try:
        return ANALYSES[name]
    except KeyError:
        raise ValueError(f"unknown analysis {name!r}; registered: {', '.join(ANALYSES)}") from None


def run_analysis(
    name: str, inputs: dict[str, list[str]], settings: dict, spec: dict, tables: list[str], figures: list[str]
) -> None:
    """Write the analysis's tables (each to the path of ``tables`` named after it) and figures
    (``plot`` writes each of ``spec["figures"]`` beside the paths of ``figures``)."""
    import pandas as pd

    from ptft import io

    analysis = get_analysis(name)
    paths = {Path(p).stem: p for p in tables}
    unknown = set(paths) - set(analysis.built_here)
    if unknown:
        raise ValueError(f"analysis {name!r} builds no table {sorted(unknown)}; it builds {list(analysis.built_here)}")
    if paths:
        from ptft import provenance

        sources: dict[tuple, pd.DataFrame] = {}  # each input read once, however many tables it feeds
        for table in analysis.tables:
            if table.name in paths:
                if table.source not in inputs:
                    raise ValueError(f"analysis {name!r}: table {table.name!r} needs input {table.source!r}; "
                                     f"given {sorted(inputs)}")  # fmt: skip
                key = (table.source, table.load)
                if key not in sources:
                    sources[key] = (table.load(inputs, spec) if table.load is not None
                                    else pd.read_parquet(inputs[table.source][0]))  # fmt: skip
                # A table is a function of its source alone: it inherits the checkpoints of that table (or its files).
                origin = provenance.of_inputs(inputs[table.source] if table.load is not None
                                              else inputs[table.source][:1])  # fmt: skip
                io.write_parquet(paths[table.name], table.build(sources[key], settings), origin)
    if figures:
        if sorted(Path(p).stem for p in figures) != sorted(spec["figures"]):
            raise ValueError(f"analysis {name!r}: figure paths {figures} are not its figures {spec['figures']}")
        analysis.plot(inputs, settings, spec, Path(figures[0]).parent)
