"""``ptft`` sub-commands of the PCFG world: pre-training its checkpoint suite and writing its datasets."""

from __future__ import annotations

from ptft.cli_args import json_arg, set_threads


def cmd_pretrain_pcfg(a) -> None:
    from ptft import io
    from ptft.pcfg.pretrain import pretrain

    set_threads(a.threads)
    manifest = pretrain(a.config, a.run, a.out_dir, a.state_dir, a.seed)
    io.write_json(a.manifest, manifest)


def cmd_pcfg_data(a) -> None:
    from ptft.pcfg.world import World, write_dataset

    write_dataset(World.from_config(a.world), a.spec, a.sizes, a.seed, a.out_dir)


def add_commands(sub) -> None:
    s = sub.add_parser("pretrain-pcfg", help="pre-train the PCFG checkpoint suite (or its scratch baseline)")
    s.add_argument("--config", type=json_arg, required=True, help="the checkpoints.pcfg block")
    s.add_argument("--run", choices=("pretrain", "baseline"), required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--state-dir", required=True)
    s.add_argument("--manifest", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_pretrain_pcfg)

    s = sub.add_parser("pcfg-data", help="write the splits of one PCFG dataset (task, operand, spurious)")
    s.add_argument("--world", type=json_arg, required=True, help="the checkpoints.pcfg.world block")
    s.add_argument("--spec", type=json_arg, required=True, help='e.g. {"task": "count", "operand": "b"}')
    s.add_argument("--sizes", type=json_arg, required=True, help='e.g. {"train": 2000, "test": 200}')
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_pcfg_data)
