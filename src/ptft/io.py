"""Atomic writes: every output appears complete under its final name or not at all."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# Marks the temporary siblings atomic_path makes, so that clearing leftovers matches nothing else.
TMP_MARK = "ptft-tmp-"


def tmp_prefix(path: Path) -> str:
    return f".{path.name}.{TMP_MARK}"


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def clear_stale_tmp(path: Path) -> None:
    """Remove the temporary siblings that writes of ``path`` killed outright (SIGKILL, OOM) left behind.

    Removing them cannot break a write in progress: Snakemake runs one job per output at a time,
    and within a job one writer at a time writes a given file (outputs, ``.state`` files), so a
    sibling that exists when a write of ``path`` starts belongs to a dead writer.
    """
    if not path.parent.is_dir():
        return
    # The suffix is mkdtemp's: 8 characters of [a-z0-9_]; nothing else in the folder can match.
    ours = re.compile(re.escape(tmp_prefix(path)) + "[a-z0-9_]{8}")
    for stale in path.parent.iterdir():
        if ours.fullmatch(stale.name) and stale.is_dir() and not stale.is_symlink():
            size = folder_size(stale)
            shutil.rmtree(stale, ignore_errors=True)
            log.warning("removed %s (%.1f MB), left by an interrupted write of %s", stale, size / 1e6, path.name)


@contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False):
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_tmp(path)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(path), dir=path.parent))
    target = tmp if is_dir else tmp / path.name
    try:
        yield target
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path):
    return json.loads(Path(path).read_text())


def write_parquet(path, df: pd.DataFrame, provenance: dict | None = None) -> None:
    """``df`` without its index, its provenance (:func:`ptft.provenance.current` of ``provenance``) in the
    file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ptft import provenance as prov

    table = pa.Table.from_pandas(df, preserve_index=False)
    record = json.dumps(prov.current(provenance), sort_keys=True, default=str)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), prov.PARQUET_KEY: record.encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_dir(path, fill: Callable[[Path], None]) -> None:
    """Build a directory with ``fill(tmp_dir)`` and move it into place in one rename."""
    with atomic_path(path, is_dir=True) as tmp:
        fill(tmp)


def write_pretrained(path, model, tokenizer, provenance: dict | None = None) -> None:
    """A model and its tokenizer as one ``save_pretrained`` folder, with its provenance, written atomically."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_provenance(tmp, provenance)

    write_dir(path, fill)


def write_provenance(folder: Path, provenance: dict | None = None) -> None:
    """``ptft_provenance.json`` in a model folder: :func:`ptft.provenance.current` of ``provenance``."""
    from ptft import provenance as prov

    write_json(Path(folder) / prov.FOLDER_FILE, prov.current(provenance))
