"""``ptft`` command line: one sub-command per workflow step; each rule calls exactly one.

Each stage registers its own sub-commands (``ptft/<stage>/cli.py``, ``add_commands``); this
module only collects them and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# The modules whose add_commands(sub) adds a stage's sub-commands, in the order of the workflow,
# then the tools that read any stage's outputs.
STAGES = (
    "ptft.download",
    "ptft.checkpoints.cli",
    "ptft.pcfg.cli",
    "ptft.data.cli",
    "ptft.derive.cli",
    "ptft.probes.cli",
    "ptft.finetune.cli",
    "ptft.evaluate.cli",
    "ptft.interpret.cli",
    "ptft.aggregate.cli",
    "ptft.analysis.cli",
    "ptft.provenance",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptft", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in STAGES:
        importlib.import_module(name).add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
