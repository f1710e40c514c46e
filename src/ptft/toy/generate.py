"""Writing the toy datasets: splits of distinct records from the toy generators."""

from __future__ import annotations

import functools
import random
from pathlib import Path

from ptft.data.registry import DATASETS, DatasetSpec
from ptft.toy import tasks
from ptft.toy.tasks import GENERATORS, chat


def record_key(spec: DatasetSpec, record: dict) -> tuple:
    """The inputs of a record: two records with the same key are the same item."""
    return tasks.record_key(spec.task, record)


def held_out_keys(dataset_dirs) -> dict[str, set[tuple]]:
    """Record keys of every scored and few-shot split of the toy datasets, by task type."""
    import pandas as pd

    keys: dict[str, set[tuple]] = {}
    for folder in map(Path, dataset_dirs):
        spec = DATASETS.get(folder.name)
        if spec is None or spec.source != "toy":
            continue
        for split in (spec.eval_split, spec.fewshot_split):
            path = folder / f"{split}.parquet"
            if path.exists():
                df = pd.read_parquet(path)
                keys.setdefault(spec.task_type, set()).update(record_key(spec, r) for r in df.to_dict("records"))
    return keys


def generate_splits(
    spec: DatasetSpec, sizes: dict[str, int], seed: int, held_out: dict[str, set[tuple]] | None = None
) -> dict[str, list[dict]]:
    """Splits of pairwise-disjoint records (no input appears in two splits or twice in one).

    ``held_out`` (task type -> record keys) are items a chat must not contain: the scored and
    few-shot items of the eval sets. Raises if the toy world cannot supply enough records.
    """
    rng = random.Random(f"{seed}:{spec.name}")
    make = GENERATORS[spec.generator]
    if spec.generator == "chat":
        make = functools.partial(chat, held_out=held_out or {})
    seen: set[tuple] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in sizes.items():
        records: list[dict] = []
        attempts = 0
        while len(records) < size:
            attempts += 1
            if attempts > 50 * size + 1000:
                raise ValueError(
                    f"toy dataset {spec.name!r}: could only draw {len(records)} distinct records "
                    f"for split {split!r} of size {size}"
                )
            record = make(rng, spec.domain)
            key = record_key(spec, record)
            if key in seen:
                continue
            seen.add(key)
            records.append({"idx": len(records), **record})
        splits[split] = records
    return splits
