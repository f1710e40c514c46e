"""Analyses of a study: pure functions of ``performance.parquet`` (and of the trajectory, probe and
Dissecting tables), each registered with its tables, figures and captions (:mod:`ptft.analysis.registry`).
What tells one fine-tuning run from another in those tables is :mod:`ptft.analysis.runs`."""

import importlib

from ptft.analysis.registry import ANALYSES, Analysis, Table, get_analysis, register

# The analysis modules, in the order of the report; each registers itself on import.
MODULES = (
    "performance",
    "seeds",
    "change",
    "transfer",
    "formats",
    "dynamics",
    "trajectory",
    "dissect",
    "lpft",
    "mechanistic",
)
for _name in MODULES:
    importlib.import_module(f"ptft.analysis.{_name}")

from ptft.analysis.formats import format_sensitivity, format_sensitivity_summary  # noqa: E402
from ptft.analysis.pretraining import learned_during_pretraining  # noqa: E402
from ptft.analysis.released import import_released_results, parse_model_id  # noqa: E402
from ptft.analysis.transfer import mean_ratio_of_change  # noqa: E402

__all__ = [
    "ANALYSES",
    "Analysis",
    "Table",
    "format_sensitivity",
    "format_sensitivity_summary",
    "get_analysis",
    "import_released_results",
    "learned_during_pretraining",
    "mean_ratio_of_change",
    "parse_model_id",
    "register",
]
