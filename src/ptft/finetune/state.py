"""Resumable training state, and the signals that ask a run to save it and stop.

The state (trainable weights, optimizer, step, RNG streams, logs so far) lives in
``<state_dir>/state.pt``, outside the rule's declared outputs, which Snakemake deletes before
re-running a job. The data position needs no field of its own: the micro-batch order is a pure
function of (seed, epoch), so the step says exactly where the stream continues.

SLURM sends SIGTERM before it kills a job (on preemption, ``scancel`` or the time limit) and
can send SIGUSR1 ahead of time (``--signal=USR1@<seconds>``). Either one makes the run finish
its current optimizer step, save, and exit with 128 + the signal number.
"""

from __future__ import annotations

import logging
import random
import signal
from pathlib import Path

import numpy as np
import torch

from ptft import io

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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


def save(path: Path, model, optimizer, step: int, extra: dict) -> None:
    payload = {
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "step": step,
        **extra,
    }
    with io.atomic_path(path) as tmp:
        torch.save(payload, tmp)
    log.info("saved training state at step %d to %s", step, path)


def load(path: Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG from ``path``; the rest of the saved dict is returned."""
    state = torch.load(path, weights_only=False, map_location="cpu")
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise ValueError(f"training state {path}: no saved values for {sorted(missing)[:3]}...; delete it to restart")
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state
