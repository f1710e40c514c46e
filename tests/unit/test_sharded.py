"""Sharded fine-tuning (ptft.finetune.sharded): N processes train the model one process trains.

The processes are CPU processes over gloo, started by ``ptft finetune --gpus N`` through torchrun as
on a GPU node; the runs are compared with a one-process run of the same config.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_finetune import cfg, write_task

from ptft.finetune.sharded import World, share
from ptft.plan import SNAPSHOT_DEFAULTS

N_EXAMPLES = 41  # 41 = 5 * 8 + 1: one micro-batch of 8 holds a single example, so one process gets none


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("sharded"), "toy_nli", N_EXAMPLES)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("sharded_pairs"), "toy_pref", 21)


def command(model_dir, data, out, st, gpus, method="full", task="toy_nli", **over):
    config = cfg(**over)
    return [sys.executable, "-m", "ptft", "finetune", "--checkpoint", str(model_dir), "--train", str(data),
            "--task", task, "--config", json.dumps(config), "--lr", "0.01", "--seed", "3", "--method", method,
            "--out-dir", str(out), "--state-dir", str(st), "--threads", "1", "--gpus", str(gpus)]  # fmt: skip


def start(cmd, log):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def kill_all(pid: int, sig: int) -> None:
    """``sig`` to ``pid`` and every process under it at once, as SLURM ends a job (torchrun starts its
    processes in sessions of their own, which a process-group kill would miss)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def finished(proc, log, timeout=300):
    rc = proc.wait(timeout=timeout)
    assert rc == 0, log.read_text()[-3000:]


def weights(folder):
    (name,) = [p.name for p in folder.glob("*.safetensors")]
    return load_file(folder / name)


def assert_same_training(a, b, atol):
    """Same losses, target tokens and final weights (float32 sums taken in another order: ``atol``)."""
    log_a, log_b = pd.read_parquet(a / "train_log.parquet"), pd.read_parquet(b / "train_log.parquet")
    assert list(log_a["step"]) == list(log_b["step"])
    assert list(log_a["tokens"]) == list(log_b["tokens"])
    pd.testing.assert_series_equal(log_a["loss"], log_b["loss"], atol=atol, rtol=0)
    wa, wb = weights(a / "model"), weights(b / "model")
    assert sorted(wa) == sorted(wb)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= atol


def test_a_micro_batch_is_split_in_contiguous_parts():
    batch = list(range(10, 17))
    parts = [share(batch, World(r, 3)) for r in range(3)]
    assert parts == [([10, 11, 12], True), ([13, 14], True), ([15, 16], True)]
    assert [share([5], World(r, 2)) for r in range(2)] == [([5], True), ([5], False)]  # the second runs at weight 0
    assert share(batch, World(0, 1)) == (batch, True)


@pytest.mark.parametrize(
    ("method", "over"),
    [
        ("full", {"batching": "grouped"}),
        ("lora", {"batching": "packed", "grad_accum": 2, "batch_size": 4}),
        # Its reference log-probs cached by one process; a preference task has no built-in probe set.
        ("dpo", {"batching": "grouped", "batch_size": 4, "probes": None}),
    ],
)
def test_two_processes_train_as_one(tiny_model_dir, data, pairs, tmp_path, method, over):
    """Losses, weights, probes and snapshots (gathered to process 0 and saved by the method) as one process's."""
    probes = {"every": 2, "examples": 4, "path": None, "eos": False, "argmax_of": None}
    snapshots = {**SNAPSHOT_DEFAULTS, "every": 3}
    over = {"save_every": 2, "probes": probes, "snapshots": snapshots, **over}
    task, train = ("toy_pref", pairs) if method == "dpo" else ("toy_nli", data)
    if method == "lora":
        over["lora"] = {**cfg()["lora"], "save": "adapter"}
    if method == "dpo":
        over["dpo"] = {"beta": 0.1, "reference": "cached", "batch_size": 16}
    runs = {g: start(command(tiny_model_dir, train, tmp_path / f"o{g}", tmp_path / f"s{g}", g, method, task, **over),
                     tmp_path / f"log{g}") for g in (1, 2)}  # fmt: skip
    for g, proc in runs.items():
        finished(proc, tmp_path / f"log{g}")
    assert_same_training(tmp_path / "o1", tmp_path / "o2", atol=1e-5)
    probe_rows = [pd.read_parquet(tmp_path / f"o{g}" / "probes.parquet") for g in (1, 2)]
    assert len(probe_rows[0]) > 0 or over["probes"] is None
    pd.testing.assert_frame_equal(*probe_rows, atol=1e-4, rtol=0)
    steps = sorted(p.name for p in (tmp_path / "o1" / "snapshots").iterdir())
    assert steps == sorted(p.name for p in (tmp_path / "o2" / "snapshots").iterdir()) and len(steps) >= 2
    for step in steps:
        wa, wb = weights(tmp_path / "o1" / "snapshots" / step), weights(tmp_path / "o2" / "snapshots" / step)
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-5
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == len(pd.read_parquet(tmp_path / "o2/train_log.parquet"))
    assert not (tmp_path / "s2" / "state.sharded").exists()  # the state is removed once the run is done
    if method == "full":  # the step with one example: the second process ran it at weight 0
        assert 0 < pd.read_parquet(tmp_path / "o2/train_log.parquet")["tokens"].min() < 64


def saved_step(st) -> int:
    # A kill between sharded.save_state's two renames leaves the last state as state.sharded.old.
    for path in (st / "state.pt", st / "state.sharded" / "progress.pt", st / "state.sharded.old" / "progress.pt"):
        try:
            return torch.load(path, weights_only=True)["step"]
        except (FileNotFoundError, RuntimeError, EOFError, KeyError):
            continue
    return -1


@pytest.mark.parametrize(("before", "after", "how"), [(2, 1, signal.SIGKILL), (1, 2, signal.SIGTERM)])
def test_a_stopped_run_resumes_on_another_process_count(tiny_model_dir, data, tmp_path, before, after, how):
    over = {"max_steps": 40, "epochs": 100, "save_every": 5}
    reference = start(command(tiny_model_dir, data, tmp_path / "a", tmp_path / "sa", 1, **over), tmp_path / "a.log")
    st = tmp_path / "sb"
    proc = start(command(tiny_model_dir, data, tmp_path / "b", st, before, **over), tmp_path / "b.log")
    deadline = time.time() + 120
    while proc.poll() is None and saved_step(st) <= 10 and time.time() < deadline:
        time.sleep(0.02)
    kill_all(proc.pid, how)  # SIGKILL: all the job's processes at once, mid-step (a node lost, a hard kill)
    rc = proc.wait(timeout=120)
    assert rc == (-signal.SIGKILL if how == signal.SIGKILL else 128 + signal.SIGTERM), (tmp_path / "b.log").read_text()
    assert not (tmp_path / "b" / "model").exists()
    assert (st / ("state.sharded" if before > 1 else "state.pt")).exists()
    stopped_at = saved_step(st)
    assert 10 < stopped_at < 40

    resumed = start(command(tiny_model_dir, data, tmp_path / "b", st, after, **over), tmp_path / "b2.log")
    finished(resumed, tmp_path / "b2.log")
    assert f"resuming at step {stopped_at} of 40" in (tmp_path / "b2.log").read_text()
    finished(reference, tmp_path / "a.log")
    assert_same_training(tmp_path / "a", tmp_path / "b", atol=1e-5)
    assert not (st / "state.pt").exists() and not (st / "state.sharded").exists()
