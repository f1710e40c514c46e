"""Resumable training state, and the signals that ask a run to save it and stop.

The state (trainable weights, optimizer, step, RNG streams, and the run's :class:`Progress`:
logs, probe rows, the method's statistics and timings so far) lives in
``<state_dir>/state.pt``, outside the rule's declared outputs, which Snakemake deletes before
re-running a job. The data position needs no field of its own: the micro-batch order is a pure
function of (seed, epoch), so the step says exactly where the stream continues.

SLURM sends SIGTERM before it kills a job (on preemption, ``scancel`` or the time limit) and
can send SIGUSR1 ahead of time (``--signal=USR1@<seconds>``). Either one makes the run finish
its current optimizer step, save, and raise :class:`Interrupted`; the ``ptft finetune`` command
exits with 128 + the signal number.
"""

from __future__ import annotations

import logging
import random
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ptft import io

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class Progress:
    """What a run has recorded so far; saved with the training state and restored on resume."""

    log: list[dict] = field(default_factory=list)  # one row per optimizer step (train_log.parquet)
    probes: list[dict] = field(default_factory=list)  # probes.parquet rows
    method_stats: dict = field(default_factory=dict)  # the method's summary.json entries (LP-FT's linear probe)
    wall_time_s: float = 0.0  # training time, probes excluded
    probe_time_s: float = 0.0


class Interrupted(Exception):
    """A stop signal arrived; the training state was saved after the step it interrupted."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}; the training state is saved")
        self.signum = signum


class StopRequested:
    """Remembers the first stop signal received; installs itself as the handler."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, _frame):
        if self.signum is None:
            log.warning("received %s: saving the training state after this step", signal.Signals(signum).name)
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict:
    """Only what trains: the frozen weights are re-loaded from the checkpoint on resume."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def save(path: Path, model, optimizer, step: int, progress: Progress) -> None:
    payload = {
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "step": step,
        "progress": asdict(progress),
    }
    with io.atomic_path(path) as tmp:
        torch.save(payload, tmp)
    log.info("saved training state at step %d to %s", step, path)


def load(path: Path, model, optimizer) -> tuple[int, Progress]:
    """Restore model, optimizer and RNG from ``path``; the step to continue at and the progress so far."""
    state = torch.load(path, weights_only=False, map_location="cpu")
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise ValueError(f"training state {path}: no saved values for {sorted(missing)[:3]}...; delete it to restart")
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state["step"], Progress(**state["progress"])
