"""The saved training state: it loads as weights only, resumes only the run it was saved for, and a
stop signal at any point of ``ptft finetune`` (even while the model loads) exits 128 + the signal."""

import json
import logging
import os
import random
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.stop import signal_at_step
from ptft import provenance, signals
from ptft.cli import build_parser
from ptft.data.convert import to_canonical
from ptft.data.registry import get_dataset
from ptft.finetune import state, train
from ptft.finetune.train import finetune
from ptft.toy.generate import generate_splits

CFG = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_length": 256,
       "max_steps": 6, "format": "default", "save_every": 100, "precision": "fp32", "batching": "grouped",
       "gradient_checkpointing": False, "max_grad_norm": 1.0, "peak_tflops": None, "probes": None}  # fmt: skip


def write_train(path, seed=0):
    spec = get_dataset("toy_nli")
    raw = generate_splits(spec, {"train": 24}, seed)["train"]
    pd.DataFrame(to_canonical(spec, "train", raw, range(len(raw)))).to_parquet(path)
    return path


@pytest.fixture
def train_file(tmp_path):
    return write_train(tmp_path / "train.parquet")


def interrupted_run(monkeypatch, checkpoint, train_file, st, lr=1e-2, at=3) -> None:
    with monkeypatch.context() as m:
        signal_at_step(m, at)
        with pytest.raises(signals.Interrupted):
            finetune(checkpoint, train_file, "toy_nli", CFG, lr, 0, st.parent / "unused", st)
    assert torch.load(st / "state.pt", weights_only=True)["step"] == at


def test_the_payload_loads_as_weights_only_and_restores_every_rng_stream(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    random.gauss(0, 1), np.random.normal()  # noqa: B018 - leaves a cached gaussian in both generators
    progress = state.Progress(log=[{"step": np.int64(1), "loss": np.float64(0.5)}],
                              method_stats={"lp_head_norm": np.float32(2.0), "rows": np.arange(3)})  # fmt: skip
    fp = {"config": "a", "data": "b", "checkpoint": "c"}
    state.save(tmp_path / "state.pt", model, opt, 7, progress, fp)
    draws = [random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand(), torch.rand(3)]

    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert saved["fingerprint"] == fp and saved["step"] == 7
    assert saved["optimizer"]["param_groups"][0]["fused"] is True
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, fused=True)
    step, restored = state.load(tmp_path / "state.pt", fresh, fresh_opt, fp)
    assert [random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand()] == draws[:4]
    assert torch.equal(torch.rand(3), draws[4])
    assert step == 7 and restored.log == [{"step": 1, "loss": 0.5}] and restored.method_stats["lp_head_norm"] == 2.0
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(fresh_opt.state_dict()["state"][0][k], v), k


def test_a_matching_state_resumes_to_the_uninterrupted_weights(tiny_model_dir, train_file, tmp_path, monkeypatch,
                                                                caplog):  # fmt: skip
    finetune(tiny_model_dir, train_file, "toy_nli", CFG, 1e-2, 0, tmp_path / "a", tmp_path / "sa")
    interrupted_run(monkeypatch, tiny_model_dir, train_file, tmp_path / "sb")
    with caplog.at_level(logging.INFO):
        finetune(tiny_model_dir, train_file, "toy_nli", {**CFG, "save_every": 50}, 1e-2, 0, tmp_path / "b",
                 tmp_path / "sb")  # fmt: skip
    assert "resuming at step 3 of 6" in caplog.text  # save_every does not change what is trained
    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_series_equal(pd.read_parquet(tmp_path / "a" / "train_log.parquet")["loss"],
                                   pd.read_parquet(tmp_path / "b" / "train_log.parquet")["loss"])  # fmt: skip


@pytest.mark.parametrize("change", ["config", "data", "checkpoint"])
def test_a_state_of_another_run_is_discarded_naming_what_changed(change, tiny_model_dir, train_file, tmp_path,
                                                                  monkeypatch, caplog):  # fmt: skip
    checkpoint = shutil.copytree(tiny_model_dir, tmp_path / "ckpt")  # copy2 keeps mtimes: the same identity
    st, lr = tmp_path / "st", 1e-2
    interrupted_run(monkeypatch, checkpoint, train_file, st)
    if change == "config":
        lr = 2e-2
    elif change == "data":
        write_train(train_file, seed=1)
    else:  # re-trained in place: other values, the same size
        weights = load_file(checkpoint / "model.safetensors")
        save_file({k: v + 1 for k, v in weights.items()}, checkpoint / "model.safetensors", {"format": "pt"})
    with caplog.at_level(logging.INFO):
        summary = finetune(checkpoint, train_file, "toy_nli", CFG, lr, 0, tmp_path / "out", st)
    assert f"training state {st / 'state.pt'} was saved for a different {change}; discarded it, training restarts " \
           "from step 0" in caplog.text  # fmt: skip
    assert "resuming" not in caplog.text and summary["steps"] == 6
    assert list(pd.read_parquet(tmp_path / "out" / "train_log.parquet")["step"]) == [1, 2, 3, 4, 5, 6]


def test_checkpoint_identity(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert provenance.checkpoint_identity(copy) == provenance.checkpoint_identity(tiny_model_dir)
    pointer = tmp_path / "p.json"
    pointer.write_text(f'{{"path": "{copy}"}}')
    assert provenance.checkpoint_identity(pointer) == provenance.checkpoint_identity(copy)
    hub = tmp_path / "hub.json"
    hub.write_text('{"model": "EleutherAI/pythia-160m", "revision": "step1", "commit": "abc"}')
    before = provenance.checkpoint_identity(hub)
    hub.write_text('{"model": "EleutherAI/pythia-160m", "revision": "step1", "commit": "abd"}')
    assert provenance.checkpoint_identity(hub) != before
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1'))
    assert provenance.checkpoint_identity(copy) != provenance.checkpoint_identity(tiny_model_dir)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled numpy (older ptft)"])
def test_an_unreadable_state_is_moved_aside_and_training_restarts(damage, tiny_model_dir, train_file, tmp_path,
                                                                   monkeypatch, caplog):  # fmt: skip
    st = tmp_path / "st"
    path = st / "state.pt"
    if damage == "truncated":
        interrupted_run(monkeypatch, tiny_model_dir, train_file, st)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        st.mkdir()
        if damage == "garbage":
            path.write_bytes(b"not a state")
        else:
            torch.save({"step": 3, "rng": {"numpy": np.random.get_state()}}, path)
    damaged = path.read_bytes()
    with caplog.at_level(logging.INFO):
        summary = finetune(tiny_model_dir, train_file, "toy_nli", CFG, 1e-2, 0, tmp_path / "out", st)
    assert f"training state {path} cannot be read" in caplog.text
    assert f"Moved it to {path}.corrupt; training starts from step 0" in caplog.text
    assert "resuming" not in caplog.text and summary["steps"] == 6
    assert (st / "state.pt.corrupt").read_bytes() == damaged and not path.exists()


def test_a_stop_while_the_model_loads_exits_128_plus_the_signal_and_keeps_the_state(
    tiny_model_dir, train_file, tmp_path, monkeypatch, caplog
):
    st = tmp_path / "st"
    interrupted_run(monkeypatch, tiny_model_dir, train_file, st)
    saved = (st / "state.pt").read_bytes()
    real = train.load_pretrained

    def slow_load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM would, while the checkpoint loads
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "load_pretrained", slow_load)

    # Without a handler of the command's own, this one would take the signal and the run would go on.
    def ignored(*_):
        pass

    previous = signal.signal(signal.SIGUSR1, ignored)
    try:
        args = build_parser().parse_args([
            "finetune", "--checkpoint", str(tiny_model_dir), "--train", str(train_file), "--task", "toy_nli",
            "--config", json.dumps(CFG), "--lr", "0.01", "--seed", "0", "--out-dir", str(tmp_path / "out"),
            "--state-dir", str(st)])  # fmt: skip
        with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
            args.func(args)
        assert signal.getsignal(signal.SIGUSR1) is ignored  # the command put back the handler it found
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert "received SIGUSR1: stopping now" in caplog.text and "stopped by SIGUSR1" in caplog.text
    assert (st / "state.pt").read_bytes() == saved and not (tmp_path / "out").exists()


def test_a_stop_before_the_first_step_saves_nothing(tiny_model_dir, tmp_path):
    from ptft.checkpoints.load import load_pretrained

    model, tok = load_pretrained(tiny_model_dir)
    data = [([5, 6, 7, 8], [-100, -100, 7, 8])] * 8
    stop = signals.StopRequested()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(signals.Interrupted, match="stopped by SIGUSR1"):
            train.train_loop(model, data, CFG, 1e-2, 0, tok.pad_token_id, tmp_path / "state.pt", stop=stop)
    finally:
        stop.restore()
    assert not (tmp_path / "state.pt").exists()
