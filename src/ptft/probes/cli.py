"""``ptft`` sub-command of the probe-set stage: ``build-probes``."""

from __future__ import annotations

import logging
import sys

from ptft.cli_args import json_arg, set_threads

log = logging.getLogger(__name__)


def cmd_build_probes(a) -> None:
    from pathlib import Path

    import pandas as pd

    from ptft import provenance
    from ptft.derive.cache import ReplyCache
    from ptft.probes.build import (
        REWRITES,
        ProbeBuildFailed,
        build_probe_set,
        complete_config,
        probe_set_record,
        write_probe_set,
    )

    set_threads(a.threads)
    name = a.name or Path(a.out).stem
    cfg = complete_config(a.config, name)
    train = pd.read_parquet(a.train).to_dict("records")
    test = pd.read_parquet(a.test).to_dict("records") if a.test else []
    backend = None
    if any(t in REWRITES for t in cfg["types"]):
        from ptft.derive.run import make_backend

        backend = make_backend(cfg["rewrites"])
    initial = (a.initial_model or cfg["initial"]["model"]) if "initial" in cfg["types"] else None
    with ReplyCache(a.cache) as cache:
        try:
            probe_set = build_probe_set(train, test, a.task, cfg, backend, cache, initial, name=name)
        except ProbeBuildFailed as e:
            log.error("%s", e)
            sys.exit(1)
    inputs = {"train": provenance.file_digest(a.train)}
    if a.test:
        inputs["test"] = provenance.file_digest(a.test)
    if initial:
        inputs["initial_model"] = provenance.checkpoint_identity(initial)
    record = probe_set_record(probe_set, cfg, inputs, backend, initial)
    origin = provenance.of_inputs([a.train, *([a.test] if a.test else [])],
                                  provenance.checkpoints_of(initial) if initial else ())  # fmt: skip
    write_probe_set(a.out, probe_set, record, origin)
    log.info("build-probes %s: %d rows of %d probe prompts, version %s, counts %s", name, len(probe_set),
             probe_set["example"].nunique(), record["version"], record["counts"])  # fmt: skip


def add_commands(sub) -> None:
    s = sub.add_parser("build-probes", help="a learning-dynamics probe set (Ren & Sutherland): every response type")
    s.add_argument("--train", required=True, help="the task's training split (data/train/<task>.parquet)")
    s.add_argument("--test", default=None, help="its test split (irrelevant_test, shuffled_test, source: test)")
    s.add_argument("--task", required=True, help="the dataset (its task type renders the prompts)")
    s.add_argument("--config", type=json_arg, required=True, help="the probe_sets.<name> block as JSON")
    s.add_argument("--name", default=None, help="the probe set's name, for messages (default: --out's stem)")
    s.add_argument("--initial-model", default=None, help="model folder or pointer that samples the initial responses")
    s.add_argument("--cache", required=True, help="SQLite reply cache of the rewrites (kept between runs)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out", required=True, help="the probe set (Parquet); its record goes to the same name .json")
    s.set_defaults(func=cmd_build_probes)
