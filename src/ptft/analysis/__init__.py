"""Analyses of a performance table: pure functions of ``performance.parquet``."""

from ptft.analysis.formats import format_sensitivity, format_sensitivity_summary
from ptft.analysis.pretraining import learned_during_pretraining
from ptft.analysis.released import import_released_results, parse_model_id
from ptft.analysis.transfer import mean_ratio_of_change

__all__ = [
    "format_sensitivity",
    "format_sensitivity_summary",
    "import_released_results",
    "learned_during_pretraining",
    "mean_ratio_of_change",
    "parse_model_id",
]
