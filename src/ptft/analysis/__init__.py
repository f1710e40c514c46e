"""Analyses of a performance table: pure functions of ``performance.parquet`` (issue 7 grows this)."""

from ptft.analysis.released import import_released_results, parse_model_id
from ptft.analysis.transfer import mean_ratio_of_change

__all__ = ["import_released_results", "mean_ratio_of_change", "parse_model_id"]
