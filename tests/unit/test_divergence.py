"""No silent wrong result: diverged runs are never selected, a non-finite loss stops training, and
examples whose target ``max_length`` cut away are counted and left out instead of dividing by zero."""

import json
import logging
import math

import pandas as pd
import pytest
import torch

from ptft.checkpoints.load import load_pretrained
from ptft.cli import main
from ptft.data.convert import to_canonical
from ptft.data.registry import get_dataset
from ptft.finetune import state
from ptft.finetune.batching import IGNORE, encode_examples, has_target
from ptft.finetune.loss import completion_loss
from ptft.finetune.select import select_lr
from ptft.finetune.train import Diverged, finetune, train_loop
from ptft.toy.generate import generate_splits

GROUP = {"checkpoint": "step10", "task": "t", "method": "full", "seed": 0}
LOOP_CFG = {"epochs": 1, "batch_size": 2, "grad_accum": 2, "warmup_ratio": 0.1, "weight_decay": 0.0, "max_steps": 6,
            "save_every": 100, "precision": "fp32", "batching": "grouped", "max_grad_norm": 1.0}  # fmt: skip
RUN_CFG = {**LOOP_CFG, "batch_size": 4, "grad_accum": 1, "max_steps": 3, "max_length": 256, "format": "default",
           "gradient_checkpointing": False, "peak_tflops": None, "probes": None}  # fmt: skip


def run(lr, loss, score=0.5, final_loss=0.3):
    return {"checkpoint": "c", "task": "t", "method": "full", "seed": 0, "lr": lr, "model_dir": f"m{lr:g}",
            "final_loss": final_loss, "validation": {"loss": loss, "score": score}}  # fmt: skip


def test_a_grid_with_a_nan_validation_loss_selects_the_finite_best():
    # The NaN run comes first: min() over NaN keeps whichever NaN it met first.
    runs = [run(1e-1, math.nan), run(1e-3, 0.9), run(1e-2, 0.4), run(3e-2, math.inf)]
    chosen = select_lr(runs, "loss", GROUP)
    assert chosen["lr"] == 1e-2 and chosen["path"] == "m0.01" and chosen["selected"] is True
    assert chosen["diverged"] == ["m0.03", "m0.1"]
    assert {c["path"]: c["diverged"] for c in chosen["candidates"]} == {
        "m0.001": False, "m0.01": False, "m0.03": True, "m0.1": True
    }  # fmt: skip
    assert [c["lr"] for c in chosen["candidates"]] == [1e-3, 1e-2, 3e-2, 1e-1]
    json.dumps(chosen)  # the selection is still written as JSON


def test_selecting_by_score_skips_a_run_whose_loss_diverged():
    # A model with NaN weights still scores at chance (argmax of NaN logits), so a finite score is not enough.
    runs = [run(1e-1, math.nan, score=0.9), run(1e-3, 0.9, score=0.6, final_loss=math.nan), run(1e-2, 0.5, score=0.4)]
    chosen = select_lr(runs, "score", GROUP)
    assert chosen["lr"] == 1e-2 and chosen["diverged"] == ["m0.001", "m0.1"]


def test_a_grid_where_every_run_diverged_fails_naming_the_runs():
    runs = [run(1e-1, math.nan), run(1e-2, math.inf), run(1e-3, 0.4, final_loss=math.nan)]
    with pytest.raises(ValueError, match="every run of the grid .* diverged") as err:
        select_lr(runs, "loss", GROUP)
    assert all(path in str(err.value) for path in ("m0.1", "m0.01", "m0.001"))


def loop_examples(vocab: int, n: int = 32, without_targets: int = 0) -> list[tuple[list[int], list[int]]]:
    """Random examples with two target tokens, the first ``without_targets`` with none after position 0."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i, length in enumerate(torch.randint(6, 20, (n,), generator=g).tolist()):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        if i < without_targets:  # cut before its target; its only trained token, if any, is the first
            labels = [ids[0] if i % 2 else IGNORE] + [IGNORE] * (length - 1)
        else:
            labels = [IGNORE] * (length - 2) + ids[-2:]
        out.append((ids, labels))
    return out


class Poisoner:
    """A prober that sets one weight to NaN after optimizer step ``at``, so the next step's loss is NaN."""

    def __init__(self, model, at: int):
        self.model, self.at = model, at

    def due(self, step, total_steps):
        return True

    def rows(self, model, step):
        if step == self.at:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = math.nan
        return []


def test_a_nan_loss_stops_training_before_the_update_without_saving(tiny_model_dir, tmp_path):
    model, tok = load_pretrained(tiny_model_dir)
    path = tmp_path / "state.pt"
    with pytest.raises(Diverged) as err:
        train_loop(model, loop_examples(model.config.vocab_size), LOOP_CFG, 1e-2, 7, tok.pad_token_id, path,
                   state.Progress(), Poisoner(model, at=2), desc="finetune toy_nli (full)")  # fmt: skip
    assert isinstance(err.value, ValueError) and err.value.step == 3 and math.isnan(err.value.loss)
    message = str(err.value)
    assert "finetune toy_nli (full), lr 0.01, seed 7" in message and "optimizer step 3 of 6" in message
    assert not path.exists()  # a re-run would replay the same step: nothing to resume
    # The NaN step's update was not applied: every weight but the poisoned one is still finite.
    params = list(model.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in params[1:])


def write_toy_nli(path, n):
    spec = get_dataset("toy_nli")
    raw = generate_splits(spec, {"train": n}, 0)["train"]
    pd.DataFrame(to_canonical(spec, "train", raw, range(len(raw)))).to_parquet(path)
    return path


def test_a_diverging_lr_makes_the_command_fail_naming_the_run(tiny_model_dir, tmp_path, capsys):
    train = write_toy_nli(tmp_path / "train.parquet", 16)
    with pytest.raises(SystemExit) as err:
        main(["finetune", "--checkpoint", str(tiny_model_dir), "--train", str(train), "--task", "toy_nli",
              "--config", json.dumps(RUN_CFG), "--lr", "1e38", "--seed", "3", "--out-dir", str(tmp_path / "ft"),
              "--state-dir", str(tmp_path / "st")])  # fmt: skip
    message = str(err.value.code)
    assert message.startswith("ptft finetune: finetune toy_nli (full), lr 1e+38, seed 3: the loss is")
    assert "optimizer step" in message
    assert not (tmp_path / "ft" / "summary.json").exists() and not (tmp_path / "ft" / "model").exists()


def test_examples_without_targets_are_counted_and_no_step_has_zero_targets(tiny_model_dir, caplog):
    model, tok = load_pretrained(tiny_model_dir)
    data = loop_examples(model.config.vocab_size, n=32, without_targets=24)
    seen = []

    def loss_fn(model, batch, fast, kept=None):
        seen.append(int((batch["labels"][:, 1:] != IGNORE).sum()))
        return completion_loss(model, batch, fast, kept)

    with caplog.at_level(logging.WARNING, logger="ptft.finetune.train"):
        result = train_loop(model, data, LOOP_CFG, 1e-2, 0, tok.pad_token_id, loss_fn=loss_fn)
    assert seen and 0 not in seen  # the loop never divides by a zero target count
    assert result.examples_without_targets == 24 and "24 of 32 training examples" in caplog.text
    assert result.steps == 2  # the 8 examples left, 2 per micro-batch, 2 micro-batches per step
    assert all(math.isfinite(r["loss"]) for r in result.progress.log)

    with pytest.raises(ValueError, match="no training example has a target token"):
        train_loop(model, data[:24], LOOP_CFG, 1e-2, 0, tok.pad_token_id)


def test_a_run_records_the_examples_max_length_cut_and_trains_on_the_rest(tiny_model_dir, tmp_path):
    train = write_toy_nli(tmp_path / "train.parquet", 24)
    _, tok = load_pretrained(tiny_model_dir)
    records = pd.read_parquet(train).to_dict("records")
    task = get_dataset("toy_nli").task
    full = encode_examples(tok, task, records, "default", 256)
    lengths = sorted(len(ids) for ids, _ in full)
    # Cuts the completion of the longer examples and keeps that of the shorter ones.
    max_length = lengths[len(lengths) // 2] - 1
    cut = sum(not has_target(labels) for _, labels in encode_examples(tok, task, records, "default", max_length))
    assert 0 < cut < len(records)

    summary = finetune(tiny_model_dir, train, "toy_nli", {**RUN_CFG, "max_length": max_length}, 1e-3, 0,
                       tmp_path / "ft", tmp_path / "st", "full", train)  # fmt: skip
    assert summary["examples_without_targets"] == cut and summary["examples"] == len(records)
    assert math.isfinite(summary["final_loss"]) and math.isfinite(summary["validation"]["loss"])
    log = pd.read_parquet(tmp_path / "ft" / "train_log.parquet")
    assert log["loss"].map(math.isfinite).all()

    with pytest.raises(ValueError, match="no validation example has a target token"):
        finetune(tiny_model_dir, train, "toy_nli", {**RUN_CFG, "max_length": 1}, 1e-3, 0,
                 tmp_path / "ft2", tmp_path / "st2", "full", train)  # fmt: skip


def test_a_diverging_lr_of_a_grid_is_recorded_and_the_selection_skips_it(tiny_model_dir, tmp_path):
    """With a validation split (the run belongs to an lr selection), a diverging lr does not stop the
    workflow: its run is recorded as diverged and the grid's finite lr is selected."""
    train = write_toy_nli(tmp_path / "train.parquet", 16)
    valid = write_toy_nli(tmp_path / "valid.parquet", 8)
    summaries = []
    for lr in (1e-3, 1e38):
        out = tmp_path / f"lr{lr:g}"
        summaries.append(finetune(tiny_model_dir, train, "toy_nli", RUN_CFG, lr, 0, out, tmp_path / f"st{lr:g}",
                                  "full", valid))  # fmt: skip
    good, bad = summaries
    assert good["diverged"] is None and math.isfinite(good["validation"]["loss"])
    assert bad["diverged"]["step"] >= 1 and not math.isfinite(bad["final_loss"])
    assert math.isnan(bad["validation"]["loss"])
    on_disk = json.loads((tmp_path / "lr1e+38" / "summary.json").read_text())
    assert on_disk["diverged"]["step"] == bad["diverged"]["step"]
    chosen = select_lr([good, on_disk], "loss", {"checkpoint": str(tiny_model_dir), "task": "toy_nli",
                                                  "method": "full", "seed": 0})  # fmt: skip
    assert chosen["lr"] == 1e-3 and [c["diverged"] for c in chosen["candidates"]] == [False, True]
