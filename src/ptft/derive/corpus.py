"""Sampling the documents to derive variants of.

Sources (``derive.corpus``):
- ``dataset``: a registered dataset (toy, or hub through the normal cache / ``data.data_dir``),
  one of its ``split`` s, its text field;
- ``path``: a local ``.txt`` (documents separated by blank lines), ``.jsonl``/``.json`` or
  ``.parquet`` file, with ``text_field`` (and optionally ``id_field``).

Documents shorter than ``min_chars`` and repeated texts are left out; ``n`` of the rest are
drawn with ``seed`` (a permutation, so a larger ``n`` keeps the smaller sample as its prefix).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_documents(cfg: dict, local_dir: str | Path | None = None) -> pd.DataFrame:
    """``doc_id``, ``text`` (and ``latent`` for toy documents) of every document of the source."""
    import datasets

    if cfg.get("path"):
        path = Path(cfg["path"])
        builder = BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"derive.corpus.path: {path} is not one of {sorted(BUILDERS)}")
        if not path.is_file():
            raise FileNotFoundError(f"derive.corpus.path: {path} does not exist")
        if builder in ("json", "text"):
            from ptft.data.prepare import bad_lines

            # Checked here, as datasets' own error names neither the file nor the line.
            bad = bad_lines(path, parse=path.suffix == ".jsonl")
            if bad:
                line, problem = bad[0]
                raise ValueError(f"derive.corpus.path: {path} line {line}: {problem} ({len(bad)} bad lines in all); "
                                 "fix the file, e.g. re-export it as UTF-8")  # fmt: skip
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        text_field = "text" if builder == "text" else cfg.get("text_field", "text")
        where = str(path)
    else:
        from ptft.data.prepare import load_raw_split
        from ptft.data.registry import get_dataset

        spec = get_dataset(cfg["dataset"])
        split = cfg.get("split") or spec.eval_split
        ds = load_raw_split(spec, split, local_dir or None)
        text_field = cfg.get("text_field") or spec.columns.get(spec.task.target, spec.task.target)
        where = f"dataset {spec.name!r} split {split!r}"
    if text_field not in ds.column_names:
        raise KeyError(f"derive.corpus: {where} has no text field {text_field!r}; its columns: {ds.column_names}")
    id_field = cfg.get("id_field")
    if id_field and id_field not in ds.column_names:
        raise KeyError(f"derive.corpus: {where} has no id field {id_field!r}; its columns: {ds.column_names}")
    df = pd.DataFrame({"text": ds[text_field]})
    df["doc_id"] = [str(x) for x in ds[id_field]] if id_field else [f"doc{i}" for i in range(len(df))]
    if "latent" in ds.column_names:
        df["latent"] = ds["latent"]
    return df


def sample_documents(docs: pd.DataFrame, n: int, min_chars: int, seed: int) -> pd.DataFrame:
    """``n`` distinct documents of at least ``min_chars`` characters, drawn with ``seed``."""
    texts = docs["text"].astype("string").str.strip()
    keep = docs[(texts.str.len() >= min_chars).fillna(False).to_numpy()].assign(text=texts)
    keep = keep.drop_duplicates("text")
    repeated = keep["doc_id"][keep["doc_id"].duplicated()]
    if len(repeated):
        raise ValueError(f"derive.corpus: document id {repeated.iloc[0]!r} names more than one document")
    if len(keep) < n:
        raise ValueError(
            f"derive.corpus: only {len(keep)} distinct documents of at least {min_chars} characters "
            f"(of {len(docs)}); n is {n}. Lower derive.corpus.n or min_chars."
        )
    order = np.random.default_rng(seed).permutation(len(keep))[:n]
    return keep.iloc[order].reset_index(drop=True)
