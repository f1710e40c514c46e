"""Writing the toy datasets: splits of distinct records from the toy generators."""

from __future__ import annotations

import random

from ptft.data.registry import DatasetSpec
from ptft.toy.tasks import GENERATORS


def record_key(spec: DatasetSpec, record: dict) -> tuple:
    """The inputs of a record: two records with the same key are the same item."""
    return tuple(record[f] for f in spec.task.fields)


def generate_splits(spec: DatasetSpec, sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    """Splits of pairwise-disjoint records (no input appears in two splits or twice in one).

    Raises if the toy world cannot supply that many distinct records.
    """
    rng = random.Random(f"{seed}:{spec.name}")
    make = GENERATORS[spec.generator]
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
