"""The data stage: raw splits in, subsampled training sets and scored/few-shot sets out.

A split is read through ``datasets``, from one of two places:

- a local folder in the hub schema (``<folder>/<split>.parquet``, ``<split>-*.parquet``,
  ``<split>/*.parquet``, or the same with ``.jsonl``/``.json``): the toy datasets, and real
  datasets under ``data.data_dir`` for clusters whose compute nodes have no internet;
- the hub: ``datasets.load_dataset(hub_id, config, split=..., revision=..., data_dir=...)``
  (``data_dir``: the entry's sub-folder of the repo, e.g. Anthropic-HH's ``helpful-base``), which
  honours the normal cache (``HF_HOME``/``HF_DATASETS_CACHE``) and offline mode (``HF_HUB_OFFLINE=1``).

Training sets follow the studies' recipe, ``train.shuffle(seed).select(range(n))`` on the raw
split. Each eval set gets a scored set and a few-shot pool that never share an item: the pool
comes from another split, or, where a dataset has only one, is carved off it before scoring.
Records are converted to the task's canonical fields and checked (``ptft.data.convert``).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import datasets
import pandas as pd
from datasets.exceptions import DatasetGenerationError

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
    if spec.generator == "pcfg":
        from ptft.pcfg.world import World, write_dataset

        drawn = {k: v for k, v in spec.pcfg.items() if k != "world"}
        write_dataset(World.from_config(spec.pcfg["world"]), drawn, wanted, seed, Path(out_dir))
        return
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


def bad_lines(path: str | Path, parse: bool = False) -> list[tuple[int, str]]:
    """(line number, what is wrong) of each line of a JSON-lines file that is not UTF-8 text
    (or, with ``parse``, not a JSON record); the file is read as bytes, so one bad line hides no other."""
    bad = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
                if parse and text.strip():
                    json.loads(text)
            except UnicodeDecodeError as e:
                bad.append((n, f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"))
            except json.JSONDecodeError as e:
                bad.append((n, f"not a JSON record ({e.msg}, column {e.colno})"))
    return bad


def _is_json_lines(path: str) -> bool:
    # A .json file may hold one JSON document (an array) instead of lines; its lines are no records.
    with open(path, "rb") as f:
        return f.read(64).lstrip()[:1] != b"["


def _bad_lines_error(spec: DatasetSpec, split: str, path: str, bad: list, skippable: bool) -> DataError:
    (line, problem), more = bad[0], f" (and {len(bad) - 1} more lines)" if len(bad) > 1 else ""
    todo = (
        "fix the file (e.g. re-export it as UTF-8 JSON lines) or set data.invalid_records: skip to leave such lines out"
        if skippable
        else "fix the file (e.g. re-export it as UTF-8); the lines of one JSON array cannot be skipped"
    )
    return DataError(f"dataset {spec.name!r} split {split!r}: {path} line {line}: {problem}{more}; {todo}")


def _clean_json_files(
    spec: DatasetSpec, split: str, files: list[str], skip_invalid: bool, tmp: Path, parse: bool
) -> list[str]:
    """``files``, each without its bad lines (``skip_invalid``; cleaned copies go to ``tmp``), or an
    error naming the first bad line."""
    out = []
    for i, path in enumerate(files):
        lines = _is_json_lines(path)
        bad = bad_lines(path, parse and lines)
        if not bad:
            out.append(path)
            continue
        if not (skip_invalid and lines):
            raise _bad_lines_error(spec, split, path, bad, lines)
        log.warning("dataset %s split %s: skipping %d bad lines of %s (first: line %d, %s)",
                    spec.name, split, len(bad), path, *bad[0])  # fmt: skip
        skip = {n for n, _ in bad}
        clean = tmp / f"{i}-{Path(path).name}"
        with open(path, "rb") as src, open(clean, "wb") as dst:
            dst.writelines(raw for n, raw in enumerate(src, 1) if n not in skip)
        out.append(str(clean))
    return out


def _load_local(spec: DatasetSpec, split: str, folder: str | Path, skip_invalid: bool) -> datasets.Dataset:
    """A split of local files; a JSON line that is not UTF-8 or not JSON is named (or skipped)."""
    builder, files = local_split_files(spec, split, folder)
    with tempfile.TemporaryDirectory() as tmp:
        if builder == "json":
            # Parsing every line costs a pass in Python: done up front only where lines are skipped.
            files = _clean_json_files(spec, split, files, skip_invalid, Path(tmp), parse=skip_invalid)
        try:
            # The dataset is read into datasets' own cache, so the cleaned copies may go afterwards.
            return datasets.load_dataset(builder, data_files={split: files}, split=split)
        except DatasetGenerationError as e:
            if builder == "json":  # name the line that is no JSON record
                _clean_json_files(spec, split, files, False, Path(tmp), parse=True)
            raise DataError(
                f"dataset {spec.name!r} split {split!r}: cannot read {', '.join(files)} ({e.__cause__ or e}); "
                f"check that the files are {builder} in the dataset's hub schema"
            ) from e


def load_raw_split(
    spec: DatasetSpec, split: str, local_dir: str | Path | None = None, skip_invalid: bool = False
) -> datasets.Dataset:
    """One split in the dataset's own schema, with a ``__row__`` column (the row's position).

    ``skip_invalid``: lines of local JSON-lines files that are not UTF-8 text or not JSON are
    left out with a warning (else they are an error naming dataset, file and line).
    """
    if local_dir:
        ds = _load_local(spec, split, local_dir, skip_invalid)
    elif spec.source == "hub":
        try:
            ds = datasets.load_dataset(
                spec.hub_id, spec.hub_config, split=split, revision=spec.revision, data_dir=spec.data_dir
            )
        except (ConnectionError, FileNotFoundError) as e:
            folder = f", data_dir {spec.data_dir}" if spec.data_dir else ""
            raise RuntimeError(
                f"dataset {spec.name!r} (hub {spec.hub_id}, config {spec.hub_config}{folder}, split {split!r}): {e}. "
                "Run `ptft download` where the hub is reachable (the cache must be shared with this machine), "
                "or point data.data_dir at local copies."
            ) from e
    else:
        raise ValueError(f"dataset {spec.name!r}: source {spec.source!r} needs a local folder")
    if spec.tinystories is not None:
        from ptft.data.tinystories import entries_dataset

        ds = entries_dataset(ds, spec, split, skip_invalid)
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
    spec: DatasetSpec,
    local_dir: str | Path | None,
    size: int | None,
    seed: int,
    fraction: float | None,
    skip_invalid: bool = False,
) -> tuple[datasets.Dataset, int]:
    """(the raw training split shuffled with ``seed``, how many of its first rows are trained on)."""
    if spec.train_split is None:
        raise ValueError(f"dataset {spec.name!r} has no training split")
    ds = load_raw_split(spec, spec.train_split, local_dir, skip_invalid)
    if spec.validation_fraction is not None:
        ds = ds.select(range(held_out_start(spec, len(ds))))
    return ds.shuffle(seed=seed), train_size(len(ds), size, fraction)


def held_out_start(spec: DatasetSpec, n_rows: int) -> int:
    """The first row of the validation split held out at the end of a training split of ``n_rows``.

    ``ceil(fraction · n)`` rows, the split sizes of the LP-FT paper (CB: 25 of 250, WSC: 56 of 554).
    """
    start = n_rows - math.ceil(spec.validation_fraction * n_rows)
    if start < 1:
        raise ValueError(f"dataset {spec.name!r}: split {spec.train_split!r} has {n_rows} rows, too few to hold out "
                         f"validation_fraction {spec.validation_fraction} and train on the rest")  # fmt: skip
    return start


def subsample_train(
    spec: DatasetSpec,
    local_dir: str | Path | None,
    size: int | None,
    seed: int,
    fraction: float | None = None,
    skip_invalid: bool = False,
) -> pd.DataFrame:
    """``train.shuffle(seed=seed).select(range(n))`` on the raw split, then converted and checked."""
    ds, n = shuffled_train(spec, local_dir, size, seed, fraction, skip_invalid)
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
    splits), so choosing an lr on it leaks nothing of the test items. A dataset with a
    ``validation_fraction`` (the LP-FT paper's rule) has the last rows of its training split,
    all of them, in their order, whatever ``validation_size`` says.
    """
    if spec.validation_fraction is not None:
        ds = load_raw_split(spec, spec.train_split, local_dir, skip_invalid)
        return canonical_frame(spec, spec.train_split, ds.select(range(held_out_start(spec, len(ds)), len(ds))),
                               skip_invalid)  # fmt: skip
    ds, n = shuffled_train(spec, local_dir, size, seed, fraction, skip_invalid)
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
    scored = load_raw_split(spec, spec.eval_split, local_dir, skip_invalid).shuffle(seed=seed)
    if spec.fewshot_split == spec.eval_split:
        pool = scored.select(range(min(pool_size, len(scored))))
        scored = scored.select(range(len(pool), len(scored)))
    else:
        pool_ds = load_raw_split(spec, spec.fewshot_split, local_dir, skip_invalid).shuffle(seed=seed)
        pool = pool_ds.select(range(min(pool_size, len(pool_ds))))
    if len(pool) < pool_size:
        # Known only now (the split's size); evaluating with more shots than this fails naming the set.
        log.warning("eval set %s: few-shot pool of %d examples, not data.fewshot_pool_size %d (split %r of %s)",
                    spec.name, len(pool), pool_size, spec.fewshot_split, local_dir or spec.hub_id)  # fmt: skip
    if max_examples is not None:
        scored = scored.select(range(min(max_examples, len(scored))))
    # Scored items keep the dataset's order, so per-example files read naturally.
    scored_df = canonical_frame(spec, spec.eval_split, scored, skip_invalid)
    scored_df = scored_df.sort_values("idx", kind="stable").reset_index(drop=True)
    return scored_df, canonical_frame(spec, spec.fewshot_split, pool, skip_invalid)


def fetch(spec: DatasetSpec, local_dir: str | Path | None, skip_invalid: bool = False) -> dict:
    """Load every split a study reads (from the hub this fills the cache); a record of what was found."""
    splits = {}
    for split in spec.splits:
        ds = load_raw_split(spec, split, local_dir, skip_invalid)
        splits[split] = {"rows": len(ds), "columns": [c for c in ds.column_names if c != ROW]}
    source = {"local_dir": str(local_dir)} if local_dir else {"hub_id": spec.hub_id, "config": spec.hub_config,
                                                              "revision": spec.revision}  # fmt: skip
    if spec.data_dir and not local_dir:
        source["data_dir"] = spec.data_dir
    return {"dataset": spec.name, "source": source, "splits": splits}
