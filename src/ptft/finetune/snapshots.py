"""Snapshots: the model saved at chosen optimizer steps of a run, and the best of them by validation.

``finetune.snapshots`` (the run config's ``snapshots``, every key filled by the caller; ``keep`` is
the workflow's, which marks the folder temporary, and may be left out)::

    {"every": N or None, "steps": [..] or None, "per_epoch": bool, "start": bool, "keep": bool,
     "select": "last" or "best_validation", "metric": "loss" or "score", "trajectory": bool}

(``trajectory`` false: the snapshots only choose the run's ``model/``, e.g. the best epoch of the
LP-FT study, and are deleted at the end instead of published; the run config omits it when true.)

:func:`snapshot_steps` turns it into the steps of one run. At each, :class:`Snapshotter` saves the
model as the method saves it to ``<state_dir>/snapshots/step{N}`` and records its validation
values in the run's :class:`ptft.finetune.state.Progress`: nothing without a validation split,
else the loss, and with ``select: best_validation`` and ``validation_score`` the score too (only
then can a snapshot become the run's ``model/``, whose validation ``summary.json`` reports).
The folders live in the state dir, not the output dir, because Snakemake deletes a job's
outputs before re-running it: snapshots taken before a preemption must survive it. A resumed run
keeps the snapshots its saved state records and takes the rest again; at the end of a successful
run the folder moves to ``<out_dir>/snapshots`` (:func:`publish`).

With ``select: best_validation`` the run's ``model/`` is the snapshot of the best validation
``metric`` (lowest loss or highest score, the earliest on ties; :func:`best`), and the last step is
a snapshot too, so the trajectory reaches the end.

Every model folder a run writes, snapshots and ``model/``, holds :data:`RUN_FILE`
(:func:`run_info`): the optimizer step of its weights, the run's total, and the run's selection.
:func:`write_model` writes it in the same rename as the weights.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ptft import io

log = logging.getLogger(__name__)

RUN_FILE = "ptft_run.json"
SELECT = ("last", "best_validation")
METRICS = ("loss", "score")


def check_spec(spec: dict, has_validation: bool, has_score: bool) -> None:
    """Raise ``ValueError`` naming the key of ``finetune.snapshots`` that this run cannot honour.

    ``has_validation``: the run has a validation split; ``has_score``: it has ``validation_score`` settings.
    """
    if spec["select"] not in SELECT:
        raise ValueError(f"finetune.snapshots.select: expected one of {', '.join(SELECT)}, got {spec['select']!r}")
    if spec["metric"] not in METRICS:
        raise ValueError(f"finetune.snapshots.metric: expected one of {', '.join(METRICS)}, got {spec['metric']!r}")
    every = spec.get("every")
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ValueError(f"finetune.snapshots.every: expected a number of steps of at least 1, got {every!r}")
    for step in spec.get("steps") or []:
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"finetune.snapshots.steps: expected optimizer steps (0 or more), got {step!r}")
    if spec["select"] == "best_validation" and not has_validation:
        raise ValueError("finetune.snapshots.select: best_validation picks the weights by their validation "
                         "metric, and this run has no validation split")  # fmt: skip
    if spec["metric"] == "score" and not has_score:
        raise ValueError("finetune.snapshots.metric: score needs finetune.validation_score (the evaluation "
                         "settings the validation split is scored with)")  # fmt: skip


def snapshot_steps(total_steps: int, batches_per_epoch: int, grad_accum: int, spec: dict) -> list[int]:
    """The optimizer steps of a run of ``total_steps`` at which a snapshot is saved, sorted.

    The union of ``every`` (N, 2N, ... below ``total_steps``), ``steps`` (as listed; ``total_steps``
    itself is the final model), ``per_epoch`` (the end of every epoch but the last: the step that
    applies the epoch's last micro-batch, ``ceil(e × batches_per_epoch / grad_accum)`` for epoch
    ``e``, below ``total_steps``), ``start`` (step 0, the model before any update) and, with
    ``select: best_validation``, ``total_steps``. A listed step beyond the run raises ``ValueError``.
    """
    chosen = set()
    if spec.get("every"):
        chosen.update(range(spec["every"], total_steps, spec["every"]))
    for step in spec.get("steps") or []:
        if step > total_steps:
            raise ValueError(f"finetune.snapshots.steps: step {step} is beyond the run's {total_steps} optimizer "
                             f"steps")  # fmt: skip
        chosen.add(step)
    if spec.get("per_epoch"):
        # An end at total_steps is the last epoch's, or max_steps cut the run before it.
        ends = (math.ceil(e * batches_per_epoch / grad_accum) for e in itertools.count(1))
        chosen.update(itertools.takewhile(lambda s: s < total_steps, ends))
    if spec.get("start"):
        chosen.add(0)
    if spec.get("select") == "best_validation":
        chosen.add(total_steps)
    return sorted(chosen)


def run_info(step: int, total_steps: int, select: str) -> dict:
    """:data:`RUN_FILE` of a model folder: the optimizer step of its weights (0: before any update),
    the run's total steps, and the run's ``snapshots.select`` (``last`` without snapshots)."""
    return {"ft_step": step, "total_steps": total_steps, "select": select}


def write_model(path: Path, fill: Callable[[Path], None], info: dict) -> None:
    """``fill(folder)`` (the method's save, or a copy) plus :data:`RUN_FILE`, moved onto ``path`` in one rename.

    ``fill`` writes into a folder inside the temporary sibling of ``path``, so that whatever a
    kill leaves behind is cleared by the next write of ``path`` (:func:`ptft.io.clear_stale_tmp`).
    """
    with io.atomic_path(path) as staged:
        fill(staged)
        io.write_json(staged / RUN_FILE, info)
        if path.exists():  # a finished folder is replaced whole, as io.write_dir does
            shutil.rmtree(path)


def copy_folder(src: Path, dst: Path) -> None:
    """``src`` as ``dst``, its files hard-linked where the filesystem allows (a model is gigabytes;
    the two are never written again), else copied."""

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def best(records: list[dict], metric: str) -> dict | None:
    """The record (``{"step", "validation"}``) of the lowest validation loss or highest score, the
    earliest on ties; a NaN counts as the worst. None if no record has the metric."""
    sign = 1.0 if metric == "loss" else -1.0

    def key(record):
        value = sign * record["validation"][metric]
        return value if not math.isnan(value) else math.inf

    scored = [r for r in records if metric in r["validation"]]
    return min(scored, key=key) if scored else None  # min keeps the first of equal keys


def publish(src: Path, dst: Path) -> None:
    """Move the snapshots folder ``src`` (state dir) to ``dst`` (output dir), replacing a stale ``dst``.

    One rename: the state dir and the output dir are on the same filesystem.
    """
    if dst.exists():
        shutil.rmtree(dst)
    src.mkdir(parents=True, exist_ok=True)  # a run whose snapshot steps were all beyond it still declares dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


class Snapshotter:
    """Saves the model at the steps of :func:`snapshot_steps` into ``folder/step{N}`` with :data:`RUN_FILE`.

    ``write(path, model, info)`` writes the model folder with :func:`write_model` as the method
    saves it (it must not change ``model``: training continues from it; a sharded run gathers it
    first); ``validate(model, batching, fast)`` gives the validation values (the loop's batching
    and loss shortcut), or None without a validation split.
    """

    def __init__(self, folder: Path, spec: dict, write: Callable, validate: Callable | None = None):
        self.folder, self.spec, self.write, self.validate = Path(folder), spec, write, validate
        self.steps: list[int] = []
        self.total_steps = 0

    def schedule(self, total_steps: int, batches_per_epoch: int, grad_accum: int) -> None:
        """Fix the steps of a run of ``total_steps``; a step beyond it raises ``ValueError`` (before training)."""
        self.steps = snapshot_steps(total_steps, batches_per_epoch, grad_accum, self.spec)
        self.total_steps = total_steps

    def resume(self, recorded: list[dict]) -> None:
        """Keep the snapshots that ``recorded`` (the progress the run continues from) lists; remove the rest.

        A folder it does not list was written after the state was saved (a kill, and the run
        takes it again from the same weights), or belongs to a state that was discarded.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        kept = {f"step{r['step']}" for r in recorded}
        for entry in self.folder.iterdir():
            if entry.name in kept:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        missing = sorted(kept - {e.name for e in self.folder.iterdir()})
        if missing:
            raise ValueError(f"{self.folder}: the training state records snapshots {', '.join(missing)}, which are "
                             f"gone; delete the state (state.pt) beside it to restart the run")  # fmt: skip

    def due(self, step: int) -> bool:
        return step in self.steps

    def take(self, model, step: int, batching: str, fast: bool) -> dict:
        """Save ``model`` as the snapshot of ``step``; its record for the progress, ``{"step", "validation"}``."""
        path = self.folder / f"step{step}"
        info = run_info(step, self.total_steps, self.spec["select"])
        self.write(path, model, info)
        validation = self.validate(model, batching, fast) if self.validate is not None else {}
        log.info("snapshot at step %d of %d: %s; validation %s", step, self.total_steps, path, validation)
        return {"step": step, "validation": validation}
