"""The data stage: raw splits in, subsampled training sets and scored/few-shot sets out.

Training sets follow the studies' recipe, ``train.shuffle(seed).select(range(n))``. Each
eval set gets a scored set and a few-shot pool that never share an item: the pool comes from
another split, or, where a dataset has only one, is carved off it before scoring.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pandas as pd

from ptft.data.registry import DatasetSpec
from ptft.toy.generate import generate_splits

log = logging.getLogger(__name__)


def write_toy_dataset(spec: DatasetSpec, sizes: dict[str, int], seed: int, out_dir: str | Path) -> None:
    """Generate a toy dataset's splits as Parquet files ``out_dir/<split>.parquet`` (hub-like schema)."""
    from ptft import io

    wanted = {s: sizes[s] for s in ("train", "validation", "test") if s != "train" or spec.train_split}
    for split, records in generate_splits(spec, wanted, seed).items():
        io.write_parquet(Path(out_dir) / f"{split}.parquet", pd.DataFrame(records))


def load_split(spec: DatasetSpec, split: str, dataset_dir: str | Path) -> datasets.Dataset:
    """A split through ``datasets``, from a folder of Parquet files in the hub schema."""
    path = Path(dataset_dir) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"dataset {spec.name!r}: split {split!r} not found at {path}")
    ds = datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
    missing = [f for f in (*spec.task.fields, spec.task.target) if f not in ds.column_names]
    if missing:
        raise ValueError(f"dataset {spec.name!r} split {split!r}: missing fields {missing}")
    if "idx" not in ds.column_names:
        ds = ds.add_column("idx", list(range(len(ds))))
    return ds


def subsample_train(spec: DatasetSpec, dataset_dir: str | Path, size: int, seed: int) -> pd.DataFrame:
    if spec.train_split is None:
        raise ValueError(f"dataset {spec.name!r} has no training split")
    ds = load_split(spec, spec.train_split, dataset_dir)
    if size > len(ds):
        log.warning("dataset %s: %d training examples requested, only %d exist; using all", spec.name, size, len(ds))
        size = len(ds)
    return ds.shuffle(seed=seed).select(range(size)).to_pandas()


def eval_and_fewshot(
    spec: DatasetSpec, dataset_dir: str | Path, max_examples: int | None, pool_size: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored items, few-shot pool), disjoint by construction."""
    scored = load_split(spec, spec.eval_split, dataset_dir).shuffle(seed=seed)
    if spec.fewshot_split == spec.eval_split:
        pool = scored.select(range(min(pool_size, len(scored))))
        scored = scored.select(range(len(pool), len(scored)))
    else:
        pool_ds = load_split(spec, spec.fewshot_split, dataset_dir).shuffle(seed=seed)
        pool = pool_ds.select(range(min(pool_size, len(pool_ds))))
    if max_examples is not None:
        scored = scored.select(range(min(max_examples, len(scored))))
    # Scored items keep the dataset's order, so per-example files read naturally.
    scored_df = scored.to_pandas().sort_values("idx", kind="stable").reset_index(drop=True)
    return scored_df, pool.to_pandas()
