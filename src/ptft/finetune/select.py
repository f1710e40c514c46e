"""Learning-rate selection: per checkpoint × task × method × seed, the grid's best run on validation.

Each run of the grid scores its validation split (``summary.json`` → ``validation``): ``loss``
is the mean cross-entropy per completion token (lower is better), ``score`` the task's primary
metric, zero-shot in the training format (higher is better). Ties go to the smaller lr.

A run whose selection metric, validation loss or final training loss is NaN or infinite has
diverged: ``min`` over such values would pick an arbitrary run, so it is marked
(``diverged: true`` in its candidate, its model_dir in ``diverged``) and never chosen. A grid
whose every run diverged has nothing to select, and is an error naming the runs.

The selection is a pointer (``path``) to the chosen run's model, so an evaluation job can be
given it as its model, and it records every candidate's value for the tables.
"""

from __future__ import annotations

import math

from ptft.evaluate.metrics import higher_is_better

SELECTION_METRICS = ("loss", "score")  # registered in ptft.evaluate.metrics with their direction


def diverged(summary: dict, metric: str) -> bool:
    """Whether a run's selection metric, validation loss or final training loss is NaN or infinite.

    The loss is checked even when selecting by score: a model with NaN weights still produces a
    finite (chance-level) score, since it predicts the argmax of NaN logits.
    """
    valid = summary.get("validation", {})
    values = [valid.get(metric), valid.get("loss"), summary.get("final_loss")]
    return any(v is not None and not math.isfinite(v) for v in values)


def select_lr(summaries: list[dict], metric: str, group: dict) -> dict:
    """The best run of one grid; ``group`` is its {checkpoint, task, method, seed} (names, for the tables)."""
    if metric not in SELECTION_METRICS:
        raise ValueError(f"finetune.select_lr.metric: unknown metric {metric!r}; allowed: loss, score")
    if not summaries:
        raise ValueError("select_lr: no runs given")
    keys = {(s["checkpoint"], s["task"], s["method"], s["seed"]) for s in summaries}
    if len(keys) != 1 or {(s["task"], s["method"], s["seed"]) for s in summaries} != {
        (group["task"], group["method"], group["seed"])
    }:
        raise ValueError(f"select_lr: the runs {sorted(keys)} are not one grid of {group}")
    candidates = []
    for s in summaries:
        value = s.get("validation", {}).get(metric)
        if value is None:
            raise ValueError(f"select_lr: run {s['model_dir']} has no validation {metric!r}; was it trained with one?")
        candidates.append({"lr": s["lr"], "value": value, "path": s["model_dir"], "diverged": diverged(s, metric)})
    finite = [c for c in candidates if not c["diverged"]]
    if not finite:
        runs = ", ".join(c["path"] for c in sorted(candidates, key=lambda c: c["lr"]))
        raise ValueError(f"select_lr: every run of the grid {group} diverged (NaN or infinite validation {metric!r}, "
                         f"validation loss or final loss), nothing to select: {runs}")  # fmt: skip
    sign = -1 if higher_is_better(metric) else 1
    best = min(finite, key=lambda c: (sign * c["value"], c["lr"]))
    return {
        "selected": True,
        "path": best["path"],
        "lr": best["lr"],
        "metric": metric,
        "value": best["value"],
        **group,
        "candidates": sorted(candidates, key=lambda c: c["lr"]),
        "diverged": [c["path"] for c in sorted(candidates, key=lambda c: c["lr"]) if c["diverged"]],
    }
