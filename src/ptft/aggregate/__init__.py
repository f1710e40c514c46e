"""Aggregation: per-example predictions → performance table, derived tables and figures."""
