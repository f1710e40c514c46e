"""Snapshots: the steps they are taken at, their folders and ``ptft_run.json``, resumption after a stop,
best-validation selection, and LoRA's merged save leaving the trained model alone."""

import json
import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from helpers.stop import signal_at_step
from ptft import signals
from ptft.data.convert import to_canonical
from ptft.data.registry import get_dataset
from ptft.finetune import snapshots
from ptft.finetune.snapshots import RUN_FILE, snapshot_steps
from ptft.finetune.train import finetune
from ptft.toy.generate import generate_splits

# 24 examples in micro-batches of 4: 6 optimizer steps.
CFG = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_length": 256,
       "max_steps": None, "format": "default", "save_every": 100, "precision": "fp32", "batching": "grouped",
       "gradient_checkpointing": False, "max_grad_norm": 1.0, "peak_tflops": None, "probes": None,
       "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear", "save": "merged"}}  # fmt: skip
SNAP = {"every": None, "steps": None, "per_epoch": False, "start": False, "keep": True, "select": "last",
        "metric": "loss"}  # fmt: skip


def snap(**over) -> dict:
    return {**SNAP, **over}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Training and validation splits of toy_nli, 24 examples each (seeds 0 and 1)."""
    folder, spec = tmp_path_factory.mktemp("snapshot_data"), get_dataset("toy_nli")
    paths = {}
    for name, seed in (("train", 0), ("validation", 1)):
        raw = generate_splits(spec, {"train": 24}, seed)["train"]
        paths[name] = folder / f"{name}.parquet"
        pd.DataFrame(to_canonical(spec, "train", raw, range(len(raw)))).to_parquet(paths[name])
    return paths


def run(checkpoint, data, out, cfg, lr=1e-2, method="full", validation=False):
    return finetune(checkpoint, data["train"], "toy_nli", cfg, lr, 0, out / "ft", out / "st", method,
                    data["validation"] if validation else None)  # fmt: skip


def weights(folder):
    return load_file(folder / "model.safetensors")


def run_file(folder):
    return json.loads((folder / RUN_FILE).read_text())


def assert_same_weights(a, b, atol=0.0):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_snapshot_steps_combine_every_listed_steps_epoch_ends_and_the_start():
    assert snapshot_steps(10, 10, 1, snap(every=3)) == [3, 6, 9]
    assert snapshot_steps(10, 10, 1, snap(every=5)) == [5]  # the final model is no snapshot of its own
    assert snapshot_steps(10, 10, 1, snap(steps=[10, 4, 0, 4])) == [0, 4, 10]
    assert snapshot_steps(10, 10, 1, snap(start=True)) == [0]
    assert snapshot_steps(10, 10, 1, snap()) == []
    # Three epochs of 5 micro-batches: the first two end at steps 5 and 10, the last is the run's end.
    assert snapshot_steps(15, 5, 1, snap(per_epoch=True)) == [5, 10]
    # Two micro-batches a step: epoch 1 ends within step 3 (micro-batches 5 and 6), epoch 2 with step 5.
    assert snapshot_steps(8, 5, 2, snap(per_epoch=True)) == [3, 5]
    # max_steps cut the run in its second epoch: only the first epoch's end.
    assert snapshot_steps(7, 5, 1, snap(per_epoch=True)) == [5]
    # An epoch shorter than a step: epochs 1 and 2 both end within step 1.
    assert snapshot_steps(4, 3, 4, snap(per_epoch=True)) == [1, 2, 3]
    assert snapshot_steps(8, 5, 2, snap(every=4, steps=[6], per_epoch=True, start=True)) == [0, 3, 4, 5, 6]
    assert snapshot_steps(8, 5, 2, snap(every=3, select="best_validation")) == [3, 6, 8]  # the end is one
    with pytest.raises(ValueError, match=r"finetune\.snapshots\.steps: step 9 is beyond the run's 8 optimizer steps"):
        snapshot_steps(8, 5, 2, snap(steps=[2, 9]))


def test_the_spec_is_checked_and_the_best_record_is_the_earliest_best():
    with pytest.raises(ValueError, match=r"finetune\.snapshots\.select: .* no validation split"):
        snapshots.check_spec(snap(select="best_validation"), has_validation=False, has_score=False)
    with pytest.raises(ValueError, match=r"finetune\.snapshots\.metric: score needs finetune\.validation_score"):
        snapshots.check_spec(snap(select="best_validation", metric="score"), has_validation=True, has_score=False)
    with pytest.raises(ValueError, match=r"finetune\.snapshots\.every"):
        snapshots.check_spec(snap(every=0), True, True)
    snapshots.check_spec(snap(select="best_validation", metric="score"), has_validation=True, has_score=True)

    nan = float("nan")
    records = [{"step": s, "validation": {"loss": loss, "score": score}}
               for s, loss, score in [(0, 3.0, 0.1), (2, nan, 0.7), (4, 2.0, nan), (6, 2.0, 0.7)]]  # fmt: skip
    assert snapshots.best(records, "loss")["step"] == 4 and snapshots.best(records, "score")["step"] == 2
    assert snapshots.best([{"step": 0, "validation": {}}], "loss") is None


def test_snapshots_are_saved_at_their_steps_with_the_weights_of_that_step(tiny_model_dir, data, tmp_path):
    summary = run(tiny_model_dir, data, tmp_path / "a", {**CFG, "snapshots": snap(every=2, start=True)})
    out = tmp_path / "a" / "ft"
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step0", "step2", "step4"]
    for step in (0, 2, 4):
        assert run_file(out / "snapshots" / f"step{step}") == {"ft_step": step, "total_steps": 6, "select": "last"}
    assert run_file(out / "model") == {"ft_step": 6, "total_steps": 6, "select": "last"}
    assert_same_weights(out / "snapshots" / "step0", tiny_model_dir)  # the model before any update, exactly
    w0, w2, w4, w6 = (weights(out / f) for f in ("snapshots/step0", "snapshots/step2", "snapshots/step4", "model"))
    for k in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert len({float((w[k] - w0[k]).abs().sum()) for w in (w0, w2, w4, w6)}) == 4  # every step's own weights
    assert summary["ft_step"] == 6 and summary["selected_step"] is None and summary["steps"] == 6
    assert summary["snapshots"] == [{"step": s, "validation": {}} for s in (0, 2, 4)]
    assert summary["snapshot_time_s"] > 0 and json.loads((out / "summary.json").read_text())["ft_step"] == 6
    assert not (tmp_path / "a" / "st" / "snapshots").exists()  # moved to the output dir
    assert not (tmp_path / "a" / "st" / "state.pt").exists()

    # Without snapshots: nothing of them is written, and model/ still says its step.
    plain = run(tiny_model_dir, data, tmp_path / "b", CFG)
    assert plain["snapshots"] == [] and plain["ft_step"] == 6 and plain["selected_step"] is None
    assert not (tmp_path / "b" / "ft" / "snapshots").exists() and not (tmp_path / "b" / "st" / "snapshots").exists()
    assert run_file(tmp_path / "b" / "ft" / "model") == {"ft_step": 6, "total_steps": 6, "select": "last"}
    assert_same_weights(tmp_path / "b" / "ft" / "model", out / "model")  # snapshots change nothing trained


def test_a_resumed_run_keeps_its_snapshots_and_ends_as_an_uninterrupted_one(
    tiny_model_dir, data, tmp_path, monkeypatch
):
    cfg = {**CFG, "snapshots": snap(every=2, start=True)}
    whole = run(tiny_model_dir, data, tmp_path / "a", cfg, validation=True)

    st, out = tmp_path / "b" / "st", tmp_path / "b" / "ft"
    with monkeypatch.context() as m:  # stopped within step 3: after the snapshot of step 2, before step 4's
        signal_at_step(m, 3)
        with pytest.raises(signals.Interrupted):
            run(tiny_model_dir, data, tmp_path / "b", cfg, validation=True)
    saved = torch.load(st / "state.pt", weights_only=True)
    assert saved["step"] == 3 and [r["step"] for r in saved["progress"]["snapshots"]] == [0, 2]
    assert sorted(p.name for p in (st / "snapshots").iterdir()) == ["step0", "step2"] and not out.exists()
    written = (st / "snapshots" / "step2" / "model.safetensors").stat().st_mtime_ns
    # A snapshot written after the state was saved (a kill before the next save) is taken again.
    (st / "snapshots" / "step4").mkdir()
    (st / "snapshots" / "step4" / "model.safetensors").write_text("partial")

    resumed = run(tiny_model_dir, data, tmp_path / "b", cfg, validation=True)
    assert (out / "snapshots" / "step2" / "model.safetensors").stat().st_mtime_ns == written  # kept, not redone
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step0", "step2", "step4"]
    for step in (0, 2, 4):
        assert_same_weights(out / "snapshots" / f"step{step}", tmp_path / "a" / "ft" / "snapshots" / f"step{step}",
                            atol=1e-6)  # fmt: skip
        assert run_file(out / "snapshots" / f"step{step}")["ft_step"] == step
    assert_same_weights(out / "model", tmp_path / "a" / "ft" / "model", atol=1e-6)
    assert [r["step"] for r in resumed["snapshots"]] == [0, 2, 4] and resumed["ft_step"] == whole["ft_step"] == 6
    for a, b in zip(resumed["snapshots"], whole["snapshots"], strict=True):
        assert a["validation"]["loss"] == pytest.approx(b["validation"]["loss"], abs=1e-6)
    assert not st.joinpath("state.pt").exists() and not st.joinpath("snapshots").exists()


def test_best_validation_selects_the_snapshot_of_the_lowest_validation_loss(tiny_model_dir, data, tmp_path):
    cfg = {**CFG, "snapshots": snap(every=1, start=True, select="best_validation")}
    # At this lr the validation loss jumps about, and is lowest in the middle of the run.
    summary = run(tiny_model_dir, data, tmp_path / "a", cfg, lr=0.5, validation=True)
    out = tmp_path / "a" / "ft"
    losses = {r["step"]: r["validation"]["loss"] for r in summary["snapshots"]}
    assert sorted(losses) == list(range(7)) and all(math.isfinite(v) for v in losses.values())
    best = min(losses, key=losses.get)
    assert 0 < best < 6 and summary["selected_step"] == summary["ft_step"] == best
    assert summary["validation"] == {"loss": losses[best]}
    assert_same_weights(out / "model", out / "snapshots" / f"step{best}")
    assert run_file(out / "model") == {"ft_step": best, "total_steps": 6, "select": "best_validation"}
    assert run_file(out / "snapshots" / "step6")["ft_step"] == 6  # the trajectory reaches the end

    # Checked before training: nothing is written.
    with pytest.raises(ValueError, match=r"finetune\.snapshots\.select"):
        run(tiny_model_dir, data, tmp_path / "b", cfg)
    with pytest.raises(ValueError, match=r"finetune\.snapshots\.metric"):
        run(tiny_model_dir, data, tmp_path / "b", {**CFG, "snapshots": snap(metric="score")}, validation=True)
    with pytest.raises(ValueError, match=r"finetune\.snapshots\.steps: step 7 is beyond the run's 6"):
        run(tiny_model_dir, data, tmp_path / "b", {**CFG, "snapshots": snap(steps=[7])})
    assert not (tmp_path / "b" / "ft").exists() and not (tmp_path / "b" / "st" / "state.pt").exists()


def test_lora_merged_snapshots_leave_training_unchanged(tiny_model_dir, data, tmp_path):
    cfg = {**CFG, "snapshots": snap(every=2, start=True)}
    run(tiny_model_dir, data, tmp_path / "a", cfg, method="lora", validation=True)
    run(tiny_model_dir, data, tmp_path / "b", CFG, method="lora", validation=True)
    a, b = tmp_path / "a" / "ft", tmp_path / "b" / "ft"
    log_a, log_b = pd.read_parquet(a / "train_log.parquet"), pd.read_parquet(b / "train_log.parquet")
    pd.testing.assert_series_equal(log_a["loss"], log_b["loss"], atol=0, rtol=0)
    assert_same_weights(a / "model", b / "model")
    # Merged snapshots are plain checkpoints; before any update the adapters add exactly nothing.
    assert_same_weights(a / "snapshots" / "step0", tiny_model_dir)
    assert not any("lora" in k for k in weights(a / "snapshots" / "step2"))


def test_snapshots_are_scored_only_where_they_may_become_the_model(tiny_model_dir, data, tmp_path):
    settings = {"batch_size": 8, "max_new_tokens": {"classification": 3, "generation": 7}, "stop": "\n",
                "rouge_stemmer": False}  # fmt: skip
    cfg = {**CFG, "max_steps": 2, "validation_score": settings}
    last = run(tiny_model_dir, data, tmp_path / "a", {**cfg, "snapshots": snap(every=1, start=True)}, validation=True)
    assert [set(r["validation"]) for r in last["snapshots"]] == [{"loss"}, {"loss"}]  # the lr selection's scoring
    assert set(last["validation"]) == {"loss", "score"} and last["ft_step"] == 2

    spec = snap(start=True, select="best_validation", metric="score")
    best = run(tiny_model_dir, data, tmp_path / "b", {**cfg, "snapshots": spec}, validation=True)
    scores = {r["step"]: r["validation"]["score"] for r in best["snapshots"]}
    assert sorted(scores) == [0, 2] and best["selected_step"] == max(scores, key=lambda s: (scores[s], -s))
    assert best["validation"] == best["snapshots"][[0, 2].index(best["selected_step"])]["validation"]
