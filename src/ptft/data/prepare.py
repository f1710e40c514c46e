"""The data stage: raw splits in, subsampled training sets and scored/few-shot sets out.

A split is read through ``datasets``, from one of two places:

- a local folder in the hub schema (``<folder>/<split>.parquet``, ``<split>-*.parquet``,
  ``<split>/*.parquet``, or the same with ``.jsonl``/``.json``): the toy datasets, and real
  datasets under ``data.data_dir`` for clusters whose compute nodes have no internet;
- the hub: ``datasets.load_dataset(hub_id, config, split=..., revision=...)``, which honours the
  normal cache (``HF_HOME``/``HF_DATASETS_CACHE``) and offline mode (``HF_HUB_OFFLINE=1``).

Training sets follow the studies' recipe, ``train.shuffle(seed).select(range(n))`` on the raw
split. Each eval set gets a scored set and a few-shot pool that never share an item: the pool
comes from another split, or, where a dataset has only one, is carved off it before scoring.
Records are converted to the task's canonical fields and checked (``ptft.data.convert``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pandas as pd

from ptft.data.convert import DataError, check_columns, to_canonical
from ptft.data.registry import DatasetSpec

log = logging.getLogger(__name__)

ROW = "__row__"
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def write_toy_dataset(
    spec: DatasetSpec, sizes: dict[str, int], seed: int, out_dir: str | Path, held_out_dirs=()
) -> None:
    """Generate a toy dataset's splits as Parquet files ``out_dir/<split>.parquet`` (hub-like schema).

    ``held_out_dirs``: raw toy datasets whose scored and few-shot items a chat dataset must avoid.
    """
    from ptft import io
    from ptft.toy.generate import generate_splits, held_out_keys

    wanted = {s: sizes[s] for s in ("train", "validation", "test") if s != "train" or spec.train_split}
    for split, records in generate_splits(spec, wanted, seed, held_out_keys(held_out_dirs)).items():
        io.write_parquet(Path(out_dir) / f"{split}.parquet", pd.DataFrame(records))


def local_split_files(spec: DatasetSpec, split: str, folder: str | Path) -> tuple[str, list[str]]:
    """(datasets builder name, files) of one split in a local folder; raises naming what was looked for."""
    folder = Path(folder)
    for suffix, builder in _BUILDERS.items():
        patterns = [f"{split}{suffix}", f"{split}-*{suffix}", f"{split}/*{suffix}"]
        files = sorted(str(p) for pattern in patterns for p in folder.glob(pattern))
        if files:
            return builder, files
    raise FileNotFoundError(
        f"dataset {spec.name!r}: no files for split {split!r} in {folder} "
        f"(looked for {split}.parquet, {split}-*.parquet, {split}/*.parquet and .jsonl/.json)"
    )


def load_raw_split(spec: DatasetSpec, split: str, local_dir: str | Path | None = None) -> datasets.Dataset:
    """One split in the dataset's own schema, with a ``__row__`` column (the row's position)."""
    if local_dir:
        builder, files = local_split_files(spec, split, local_dir)
        ds = datasets.load_dataset(builder, data_files={split: files}, split=split)
    elif spec.source == "hub":
        try:
            ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split, revision=spec.revision)
        except (ConnectionError, FileNotFoundError) as e:
            raise RuntimeError(
                f"dataset {spec.name!r} (hub {spec.hub_id}, config {spec.hub_config}, split {split!r}): {e}. "
                "Run `ptft download` where the hub is reachable (the cache must be shared with this machine), "
                "or point data.data_dir at local copies."
            ) from e
    else:
        raise ValueError(f"dataset {spec.name!r}: source {spec.source!r} needs a local folder")
    check_columns(spec, split, ds.column_names)
    return ds.add_column(ROW, list(range(len(ds))))


def canonical_frame(spec: DatasetSpec, split: str, ds: datasets.Dataset, skip_invalid: bool = False) -> pd.DataFrame:
    rows = ds.to_list()
    indices = [r.pop(ROW) for r in rows]
    records = to_canonical(spec, split, rows, indices, skip_invalid)
    if not records:
        raise DataError(f"dataset {spec.name!r} split {split!r}: no valid records")
    return pd.DataFrame(records)


def train_size(n_available: int, size: int | None, fraction: float | None) -> int:
    """Examples to keep: ``size``, or ``fraction`` of the split (Tulu: 5 %), at most what exists."""
    wanted = size if fraction is None else round(fraction * n_available)
    return min(wanted, n_available)


def shuffled_train(
    spec: DatasetSpec, local_dir: str | Path | None, size: int | None, seed: int, fraction: float | None
) -> tuple[datasets.Dataset, int]:
    """(the raw training split shuffled with ``seed``, how many of its first rows are trained on)."""
    if spec.train_split is None:
        raise ValueError(f"dataset {spec.name!r} has no training split")
    ds = load_raw_split(spec, spec.train_split, local_dir)
    return ds.shuffle(seed=seed), train_size(len(ds), size, fraction)


def subsample_train(
    spec: DatasetSpec,
    local_dir: str | Path | None,
    size: int | None,
    seed: int,
    fraction: float | None = None,
    skip_invalid: bool = False,
) -> pd.DataFrame:
    """``train.shuffle(seed=seed).select(range(n))`` on the raw split, then converted and checked."""
    ds, n = shuffled_train(spec, local_dir, size, seed, fraction)
    if size is not None and fraction is None and size > len(ds):
        log.warning("dataset %s: %d training examples requested, only %d exist; using all", spec.name, size, len(ds))
    return canonical_frame(spec, spec.train_split, ds.select(range(n)), skip_invalid)


def validation_split(
    spec: DatasetSpec,
    local_dir: str | Path | None,
    size: int | None,
    seed: int,
    validation_size: int,
    fraction: float | None = None,
    skip_invalid: bool = False,
) -> pd.DataFrame:
    """The ``validation_size`` examples after the training ones in the same shuffled training split.

    Disjoint from the training subsample and from every eval set (those come from other
    splits), so choosing an lr on it leaks nothing of the test items.
    """
    ds, n = shuffled_train(spec, local_dir, size, seed, fraction)
    end = min(len(ds), n + validation_size)
    if end <= n:
        raise ValueError(
            f"dataset {spec.name!r}: no examples left for a validation split after the {n} training ones "
            f"(split {spec.train_split!r} has {len(ds)}); lower data.train_size or turn off finetune.select_lr"
        )
    if end - n < validation_size:
        log.warning("dataset %s: validation split has %d examples, not %d", spec.name, end - n, validation_size)
    return canonical_frame(spec, spec.train_split, ds.select(range(n, end)), skip_invalid)


def eval_and_fewshot(
    spec: DatasetSpec,
    local_dir: str | Path | None,
    max_examples: int | None,
    pool_size: int,
    seed: int,
    skip_invalid: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored items, few-shot pool), disjoint by construction."""
    scored = load_raw_split(spec, spec.eval_split, local_dir).shuffle(seed=seed)
    if spec.fewshot_split == spec.eval_split:
        pool = scored.select(range(min(pool_size, len(scored))))
        scored = scored.select(range(len(pool), len(scored)))
    else:
        pool_ds = load_raw_split(spec, spec.fewshot_split, local_dir).shuffle(seed=seed)
        pool = pool_ds.select(range(min(pool_size, len(pool_ds))))
    if max_examples is not None:
        scored = scored.select(range(min(max_examples, len(scored))))
    # Scored items keep the dataset's order, so per-example files read naturally.
    scored_df = canonical_frame(spec, spec.eval_split, scored, skip_invalid)
    scored_df = scored_df.sort_values("idx", kind="stable").reset_index(drop=True)
    return scored_df, canonical_frame(spec, spec.fewshot_split, pool, skip_invalid)


def fetch(spec: DatasetSpec, local_dir: str | Path | None) -> dict:
    """Load every split a study reads (from the hub this fills the cache); a record of what was found."""
    splits = {}
    for split in spec.splits:
        ds = load_raw_split(spec, split, local_dir)
        splits[split] = {"rows": len(ds), "columns": [c for c in ds.column_names if c != ROW]}
    source = {"local_dir": str(local_dir)} if local_dir else {"hub_id": spec.hub_id, "config": spec.hub_config,
                                                              "revision": spec.revision}  # fmt: skip
    return {"dataset": spec.name, "source": source, "splits": splits}
