"""Resumable training state, and the signals that ask a run to save it and stop.

The state (trainable weights, optimizer, step, RNG streams, and the run's :class:`Progress`:
logs, probe rows, snapshot records, the method's statistics and timings so far) lives in
``<state_dir>/state.pt``, outside the rule's declared outputs, which Snakemake deletes before
re-running a job. The data position needs no field of its own: the micro-batch order is a pure
function of (seed, epoch), so the step says exactly where the stream continues.

The state carries the :func:`fingerprint` of what it was trained from (the run's config, its
data files, the checkpoint). A run resumes only a state with its own fingerprint; a state of
another config, data or checkpoint is discarded, and one that cannot be read (truncated, or
pickled by an older ptft) is moved aside as ``state.pt.corrupt``. Either way training restarts
from step 0. The state is loaded with ``torch.load(weights_only=True)``, so it holds only tensors
and plain Python values (:func:`rng_state` converts the RNG states).

A sharded run (``finetune.gpus`` > 1, :mod:`ptft.finetune.sharded`) keeps the same contents in
``<state_dir>/state.sharded/`` instead, written by all its processes; either form resumes on any
number of processes (:func:`load`), and a save removes the other form.

Stop signals are handled in :mod:`ptft.signals`: in the training loop a signal makes the run
finish its current optimizer step, save, and raise :class:`ptft.signals.Interrupted`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ptft import io, provenance
from ptft.finetune import sharded
from ptft.finetune.methods import trainable_names

log = logging.getLogger(__name__)
FINGERPRINT_PARTS = ("config", "data", "checkpoint")
# Settings that cannot change what is trained: when the state is saved, and the MFU denominator.
NOT_FINGERPRINTED = ("save_every", "peak_tflops")


@dataclass
class Progress:
    """What a run has recorded so far; saved with the training state and restored on resume."""

    log: list[dict] = field(default_factory=list)  # one row per optimizer step (train_log.parquet)
    probes: list[dict] = field(default_factory=list)  # probes.parquet rows
    method_stats: dict = field(default_factory=dict)  # the method's summary.json entries (LP-FT's linear probe)
    snapshots: list[dict] = field(default_factory=list)  # {"step", "validation"} of each snapshot saved
    wall_time_s: float = 0.0  # training time, probes and snapshots excluded
    probe_time_s: float = 0.0
    snapshot_time_s: float = 0.0  # saving the snapshots and their validation


# -- Fingerprint: what a saved state was trained from.


def fingerprint(run: dict, data: list[str | Path | None], checkpoint: str | Path) -> dict[str, str]:
    """One digest per part (:data:`FINGERPRINT_PARTS`), so that a mismatch can name what changed.

    ``run``: the run's settings (config, lr, seed, method, task); ``data``: its data files
    (training, validation; None for an absent one).
    """
    settings = {k: v for k, v in run.items() if k not in NOT_FINGERPRINTED}
    if isinstance(settings.get("config"), dict):
        config = {k: v for k, v in settings["config"].items() if k not in NOT_FINGERPRINTED}
        # A run without snapshots keeps the fingerprint it had before they existed, so its state
        # still resumes; whether the workflow keeps them afterwards changes nothing trained.
        snapshots = config.pop("snapshots", None)
        if snapshots:
            config["snapshots"] = {k: v for k, v in snapshots.items() if k != "keep"}
        settings["config"] = config
    return {
        "config": provenance.sha256_text(json.dumps(settings, sort_keys=True, default=str)),
        "data": provenance.sha256_text(" ".join(provenance.file_digest(p) if p is not None else "-" for p in data)),
        "checkpoint": provenance.checkpoint_identity(checkpoint),
    }


# -- The payload: only tensors and plain values, so it loads with weights_only=True.


def _plain(value):
    """``value`` with NumPy scalars and arrays made Python values and tensors (weights_only loads neither)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value


def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py, nps = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict:
    """Only what trains: the frozen weights are re-loaded from the checkpoint on resume."""
    names = set(trainable_names(model))
    return {k: v for k, v in model.state_dict().items() if k in names}


def sharded_path(path: Path) -> Path:
    """Where a sharded run (:mod:`ptft.finetune.sharded`) keeps the state that one process keeps in ``path``."""
    return path.with_name(sharded.SHARDED_DIR)


def save(path: Path, model, optimizer, step: int, progress: Progress, fingerprint: dict | None = None) -> None:
    """Save at ``path`` (``state.pt``), or, in a sharded run, in its sharded twin (every process calls it).

    Either removes the other form, so a run's folder holds one state, the latest.
    """
    extra = {"step": step, "progress": _plain(asdict(progress)), "fingerprint": fingerprint}
    w = sharded.world()
    if w.sharded:
        sharded.save_state(sharded_path(path), model, optimizer, extra, rng_state())
        if w.main:
            path.unlink(missing_ok=True)
    else:
        payload = {"model": trainable_state(model), "optimizer": optimizer.state_dict(), "rng": rng_state(), **extra}
        with io.atomic_path(path) as tmp:
            torch.save(payload, tmp)
        shutil.rmtree(sharded_path(path), ignore_errors=True)
    log.info("saved training state at step %d to %s", step, sharded_path(path) if w.sharded else path)


def remove(path: Path) -> None:
    """Remove the run's state, in either form (the run is done)."""
    path.unlink(missing_ok=True)
    shutil.rmtree(sharded_path(path), ignore_errors=True)


def _set_aside(path: Path, err: Exception) -> None:
    aside = path.with_name(path.name + ".corrupt")
    if aside.is_dir():
        shutil.rmtree(aside)
    os.replace(path, aside)
    reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
    log.warning("training state %s cannot be read (%s); it is truncated, corrupt or written by an older ptft. "
                "Moved it to %s; training starts from step 0", path, reason, aside)  # fmt: skip


def _newest(path: Path) -> Path | None:
    """The state a run would resume: ``path``, its sharded twin, or the newer of the two (a save
    removes the other form last, so a stop between leaves both)."""
    folder = sharded_path(path)
    old = folder.with_name(folder.name + ".old")
    if old.exists() and not folder.exists():  # a kill between the two renames of sharded.save_state
        os.replace(old, folder)
    found = [p for p in (path, folder) if p.exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _read(path: Path, fingerprint: dict | None, mmap: bool = False) -> tuple[Path, dict] | None:
    """Which state this run can resume (``path`` or its sharded twin) and what it holds (a sharded
    one's step, progress and fingerprint only); else None, the file set aside.

    ``fingerprint`` None resumes whatever was saved (a caller of the loop without one).
    """
    found = _newest(path)
    if found is None:
        return None
    try:
        if found.is_dir():
            saved = sharded.read_extra(found)
        else:
            saved = torch.load(found, weights_only=True, map_location="cpu", mmap=mmap)
        saved_print = saved.get("fingerprint")
    except Exception as err:  # noqa: BLE001 - any unreadable file is set aside the same way
        _set_aside(found, err)
        return None
    if fingerprint is None:
        return found, saved
    changed = [k for k in FINGERPRINT_PARTS if (saved_print or {}).get(k) != fingerprint.get(k)]
    if changed:
        shutil.rmtree(found) if found.is_dir() else found.unlink()
        log.warning("training state %s was saved for a different %s; discarded it, training restarts from step 0",
                    found, " and ".join(changed))  # fmt: skip
        return None
    return found, saved


def _resumable(path: Path, fingerprint: dict | None) -> tuple[Path | None, dict | None]:
    """The state to resume, as process 0 finds it (only it sets files aside, and all processes must
    resume the same state, or none), and what :func:`_read` read of it (None on the other processes)."""
    w = sharded.world()
    found = saved = None
    if w.main:
        found, saved = _read(path, fingerprint, mmap=True) or (None, None)
    return sharded.same_on_all(found, w), saved


def usable(path: Path, fingerprint: dict | None) -> bool:
    """Whether ``path`` (or its sharded twin) holds a state this run will resume; an unusable one is set
    aside (see :func:`_read`).

    Memory-mapped: the tensors are not read, so checking costs little even for a large model.
    """
    return _resumable(path, fingerprint)[0] is not None


def load(path: Path, model, optimizer, fingerprint: dict | None = None) -> tuple[int, Progress] | None:
    """Restore model, optimizer and RNG from ``path`` or its sharded twin, whichever form this run
    takes (one process or several); the step to continue at and the progress so far.

    None where there is no state this run can resume (absent, unreadable, or of another
    fingerprint: see :func:`_read`).
    """
    found, state = _resumable(path, fingerprint)
    if found is None:
        return None
    if found.is_dir():
        extra = state or sharded.read_extra(found)
        set_rng_state(sharded.load_state(found, model, optimizer))
        return extra["step"], Progress(**extra["progress"])
    if state is None:  # another process than 0 of a sharded run
        state = torch.load(found, weights_only=True, map_location="cpu", mmap=True)
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise ValueError(f"training state {path}: no saved values for {sorted(missing)[:3]}...; delete it to restart")
    if sharded.world().sharded:
        sharded.load_whole_state(state, model, optimizer, trainable_names(model))
    else:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state["step"], Progress(**state["progress"])
