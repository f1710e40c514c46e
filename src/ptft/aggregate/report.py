"""Report pages: a Parquet table as an HTML page (a browser cannot show Parquet)."""

from __future__ import annotations

import pandas as pd

STYLE = (
    "<style>body{font:13px sans-serif;margin:1em} table{border-collapse:collapse} "
    "th,td{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd} th{position:sticky;top:0;"
    "background:#f4f4f4}</style>"
)


def table_html(table: pd.DataFrame, title: str) -> str:
    html = table.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–", border=0)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>{STYLE}</head>"
        f"<body><p>{title}: {len(table)} rows</p>{html}</body></html>"
    )
