"""``ptft`` sub-commands of the checkpoints stage: the toy suite and the resolved manifest."""

from __future__ import annotations

from ptft.cli_args import json_arg, set_threads


def cmd_pretrain_toy(a) -> None:
    from ptft import io
    from ptft.checkpoints.toy_pretrain import pretrain

    set_threads(a.threads)
    manifest = pretrain(a.config, a.data_dirs, a.out_dir, a.state_dir, a.seed)
    io.write_json(a.manifest, manifest)


def cmd_checkpoint_manifest(a) -> None:
    from ptft import io

    if a.manifests:
        # The PCFG suite's runs: the first run's record (architecture, parameters) with every run's checkpoints.
        parts = [io.read_json(p) for p in a.manifests]
        manifest = {**parts[0], "suite": a.suite, "checkpoints": [c for part in parts for c in part["checkpoints"]]}
    else:
        manifest = {"suite": a.suite, "checkpoints": [io.read_json(p) for p in a.pointers]}
    io.write_json(a.out, manifest)


def add_commands(sub) -> None:
    s = sub.add_parser("pretrain-toy", help="pre-train the toy checkpoint suite")
    s.add_argument("--config", type=json_arg, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--data-dirs", nargs="+", required=True, help="raw toy dataset folders (held out of the corpus)")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--state-dir", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_pretrain_toy)

    s = sub.add_parser("checkpoint-manifest", help="the resolved suite: every checkpoint pointer in one file")
    given = s.add_mutually_exclusive_group(required=True)
    given.add_argument("--pointers", nargs="+", help="one pointer file per checkpoint (hub, local)")
    given.add_argument("--manifests", nargs="+", help="the manifests of the suite's pre-training runs (pcfg)")
    s.add_argument("--suite", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_checkpoint_manifest)
