"""Stopping a training run mid-way, as a scheduler's signal would."""

import os
import signal

from ptft.finetune import train


def signal_at_step(monkeypatch, step: int) -> None:
    """Send this process SIGUSR1 during optimizer step ``step`` (from 1): the loop saves after it and stops."""
    calls, real = [], train.clip_gradients

    def clip(params, max_norm):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(params, max_norm)

    monkeypatch.setattr(train, "clip_gradients", clip)
