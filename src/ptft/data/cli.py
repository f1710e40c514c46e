"""``ptft`` sub-commands of the data stage: toy datasets, training subsamples, eval sets."""

from __future__ import annotations

import argparse

from ptft.cli_args import json_arg


def cmd_toy_data(a) -> None:
    from ptft.data.prepare import write_toy_dataset
    from ptft.data.registry import get_dataset

    write_toy_dataset(get_dataset(a.dataset), a.sizes, a.seed, a.out_dir, a.held_out)


def cmd_prepare_train(a) -> None:
    from ptft import io
    from ptft.data.prepare import subsample_train
    from ptft.data.registry import get_dataset

    df = subsample_train(get_dataset(a.dataset), a.local_dir, a.size, a.seed, a.fraction, a.invalid == "skip")
    io.write_parquet(a.out, df)


def cmd_prepare_validation(a) -> None:
    from ptft import io
    from ptft.data.prepare import validation_split
    from ptft.data.registry import get_dataset

    spec = get_dataset(a.dataset)
    df = validation_split(spec, a.local_dir, a.size, a.seed, a.validation_size, a.fraction, a.invalid == "skip")
    io.write_parquet(a.out, df)


def cmd_prepare_eval(a) -> None:
    from ptft import io
    from ptft.data.prepare import eval_and_fewshot
    from ptft.data.registry import get_dataset

    scored, pool = eval_and_fewshot(
        get_dataset(a.dataset), a.local_dir, a.max_examples, a.pool_size, a.seed, a.invalid == "skip"
    )
    io.write_parquet(a.out_eval, scored)
    io.write_parquet(a.out_fewshot, pool)


def add_commands(sub) -> None:
    s = sub.add_parser("toy-data", help="generate one toy dataset's splits")
    s.add_argument("--dataset", required=True)
    s.add_argument("--sizes", type=json_arg, required=True, help='{"train": n, "validation": n, "test": n}')
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--held-out", nargs="*", default=[], help="raw toy datasets whose test items a chat must avoid")
    s.set_defaults(func=cmd_toy_data)

    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--dataset", required=True)
    source.add_argument("--local-dir", default=None, help="folder of the split files (default: the hub)")
    source.add_argument("--invalid", choices=["error", "skip"], default="error", help="bad records")
    source.add_argument("--seed", type=int, required=True)

    s = sub.add_parser("prepare-train", parents=[source], help="subsample one training set")
    s.add_argument("--size", type=int, default=None)
    s.add_argument("--fraction", type=float, default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prepare_train)

    s = sub.add_parser("prepare-validation", parents=[source], help="a training task's validation split")
    s.add_argument("--size", type=int, default=None, help="training examples (as for prepare-train)")
    s.add_argument("--fraction", type=float, default=None)
    s.add_argument("--validation-size", type=int, required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prepare_validation)

    s = sub.add_parser("prepare-eval", parents=[source], help="one eval set's scored items and few-shot pool")
    s.add_argument("--max-examples", type=json_arg, default=None)
    s.add_argument("--pool-size", type=int, required=True)
    s.add_argument("--out-eval", required=True)
    s.add_argument("--out-fewshot", required=True)
    s.set_defaults(func=cmd_prepare_eval)
