"""Eval and few-shot sets of toy datasets, laid out as the workflow's ``data/`` folder."""

from pathlib import Path


def write_eval_data(root: Path, names=("toy_nli", "toy_summary")) -> Path:
    """``root/data/{eval,fewshot}/<name>.parquet`` (6 scored items, a pool of 4 each); ``root/data``."""
    from ptft.data.prepare import eval_and_fewshot, write_toy_dataset
    from ptft.data.registry import get_dataset

    for name in names:
        spec = get_dataset(name)
        write_toy_dataset(spec, {"train": 4, "validation": 12, "test": 12}, 0, root / "raw" / name)
        scored, pool = eval_and_fewshot(spec, root / "raw" / name, 6, 4, 0)
        for folder, df in (("eval", scored), ("fewshot", pool)):
            (root / "data" / folder).mkdir(parents=True, exist_ok=True)
            df.to_parquet(root / "data" / folder / f"{name}.parquet")
    return root / "data"
