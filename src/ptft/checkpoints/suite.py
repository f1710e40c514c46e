"""Names and steps of a checkpoint suite (kept free of heavy imports: the Snakefile reads it)."""

from __future__ import annotations

import numpy as np


def save_steps(total: int, n: int, first: int) -> list[int]:
    """``n`` checkpoint steps: ``first``, uniformly spaced ones, and the final step."""
    if n < 2 or not 0 < first < total:
        raise ValueError(f"need n >= 2 and 0 < first ({first}) < total ({total})")
    steps = sorted({round(x) for x in np.linspace(first, total, n)})
    if len(steps) != n:
        raise ValueError(f"cannot place {n} distinct checkpoints between steps {first} and {total}")
    return steps


def checkpoint_name(step: int) -> str:
    return f"step{step}"
