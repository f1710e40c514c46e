"""``ptft`` sub-commands of the fine-tuning stage: one training run, and the lr selection."""

from __future__ import annotations

import os
import sys

from ptft.cli_args import json_arg, set_threads
from ptft.finetune.methods import METHOD_NAMES
from ptft.finetune.select import SELECTION_METRICS

# torchrun waits this long for its processes to save after a stop signal before it kills them
# (its default, 30 s, is short for a 7B model's optimizer state); SLURM's early signal comes
# 600 s before the time limit (profiles/slurm).
SHUTDOWN_TIMEOUT_S = 300


def launch(processes: int, argv: list[str]) -> None:
    """Run ``ptft`` with ``argv`` in ``processes`` processes under torchrun's agent, in this process
    (:mod:`ptft.finetune.sharded`); exit as they did.

    ``--standalone``: one node, its rendezvous on a free local port, so two jobs on one node do not
    collide. No restarts: a failed process fails the job, and Snakemake's retry resumes from the
    state. A stop signal reaches every process, which save and exit; the agent then exits with
    128 + the signal number, as one process would.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc-per-node={processes}", "--max-restarts=0",
                       f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}", "-m", "ptft", *argv])  # fmt: skip
    try:
        run(args)
    except SignalException as err:
        raise SystemExit(128 + int(err.sigval)) from None
    except ChildFailedError as err:
        failed = len(err.failures)
        raise SystemExit(f"ptft finetune: {failed} of {processes} processes failed; their errors are above") from None
    raise SystemExit(0)


def cmd_finetune(a) -> None:
    from ptft.signals import run_stoppable

    if a.gpus > 1 and "WORLD_SIZE" not in os.environ:  # not yet one of torchrun's processes
        launch(a.gpus, sys.argv[1:])

    run_stoppable("ptft finetune", lambda stop: _finetune(a, stop), immediate=True)


def _finetune(a, stop) -> None:
    from ptft.finetune.train import Diverged, finetune

    set_threads(a.threads)
    try:
        finetune(a.checkpoint, a.train, a.task, a.config, a.lr, a.seed, a.out_dir, a.state_dir, a.method, a.validation,
                 stop=stop)  # fmt: skip
    except Diverged as err:
        # Exit status 1 with the message alone: the traceback says nothing about the run's lr or data.
        raise SystemExit(f"ptft finetune: {err}") from None


def cmd_select_lr(a) -> None:
    from ptft import io
    from ptft.finetune.select import select_lr

    io.write_json(a.out, select_lr([io.read_json(p) for p in a.summaries], a.metric, a.group))


def add_commands(sub) -> None:
    s = sub.add_parser("finetune", help="fine-tune one checkpoint on one task")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--train", required=True)
    s.add_argument("--task", required=True)
    s.add_argument("--config", type=json_arg, required=True)
    s.add_argument("--lr", type=float, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--state-dir", required=True)
    s.add_argument("--method", default="full", choices=METHOD_NAMES)
    s.add_argument("--validation", default=None, help="validation split (for the lr selection)")
    s.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    s.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="processes, one per GPU (on a machine without one, CPU processes): sharded over them (FSDP2)",
    )
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("select-lr", help="pick the best learning rate of a grid by a validation metric")
    s.add_argument("--summaries", nargs="+", required=True, help="summary.json of each run of the grid")
    s.add_argument("--metric", required=True, choices=SELECTION_METRICS)
    s.add_argument("--group", type=json_arg, required=True, help="{checkpoint, task, method, seed} of the grid")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_select_lr)
