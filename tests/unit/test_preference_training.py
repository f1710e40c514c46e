"""Training on preference pairs: the release's length rules, the schedules and optimizers, and a DPO
run through ``finetune`` that probes, validates, and resumes with its cached reference."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from helpers.stop import signal_at_step
from ptft import signals
from ptft.data.registry import get_dataset
from ptft.finetune import optim
from ptft.finetune.batching import IGNORE, encode_responses
from ptft.finetune.methods.dpo import REFERENCE_FILE
from ptft.finetune.train import finetune
from ptft.toy.preference import preference

CFG = {"epochs": 2, "batch_size": 4, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.0, "max_length": 128,
       "max_prompt_length": 24, "max_steps": None, "format": "default", "save_every": 100, "precision": "fp32",
       "batching": "grouped", "gradient_checkpointing": False, "max_grad_norm": 10.0, "peak_tflops": None,
       "optimizer": "rmsprop", "schedule": "constant", "warmup_steps": 2, "snapshots": None,
       "dpo": {"beta": 0.1, "reference": "cached", "batch_size": 8}}  # fmt: skip


class WordTokenizer:
    """One token per character: lengths in tokens are lengths in characters."""

    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


@pytest.mark.parametrize(("keep", "kept"), [("end", "bcdefgh:"), ("start", "Q abcdef")])
def test_a_long_prompt_keeps_its_end_or_start_and_eos_ends_every_response(keep, kept):
    task = get_dataset("toy_pref").task
    record = {"prompt": "Q abcdefgh:", "chosen": "yes", "rejected": "no"}
    [seqs] = encode_responses(WordTokenizer(), task, [record], "default", 100, 8, keep, ("chosen", "rejected"))
    for name, response in (("chosen", " yes"), ("rejected", " no")):
        ids, labels = seqs[name]
        assert "".join(map(chr, ids[:8])) == kept  # the same prompt tokens before either response
        assert ids[8:] == [ord(c) for c in response] + [1] and labels == [IGNORE] * 8 + ids[8:]
    [cut] = encode_responses(WordTokenizer(), task, [record], "default", 10, 8, keep, ("chosen",))
    assert len(cut["chosen"][0]) == 10 and cut["chosen"][1][8:] == cut["chosen"][0][8:]  # the response is cut


def test_the_constant_schedule_warms_up_then_holds_and_warmup_steps_beat_the_ratio():
    assert [optim.constant(s, 10, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert optim.linear(9, 10, 4) == pytest.approx(1 / 6)
    assert optim.warmup_steps(1000, {"warmup_steps": 150, "warmup_ratio": 0.5}) == 150
    assert optim.warmup_steps(100, {"warmup_steps": 150, "warmup_ratio": 0.5}) == 100  # at most the run
    assert optim.warmup_steps(100, {"warmup_steps": None, "warmup_ratio": 0.05}) == 5
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(optim.make_optimizer(params, {"optimizer": "rmsprop", "weight_decay": 0.0}, 1e-3,
                                           torch.device("cpu")), torch.optim.RMSprop)  # fmt: skip
    with pytest.raises(ValueError, match="finetune.schedule: unknown schedule 'step'"):
        optim.lr_multiplier(0, 10, 1, {"schedule": "step"})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("pairs")
    pd.DataFrame([preference(rng, "home") for _ in range(24)]).to_parquet(folder / "train.parquet")
    pd.DataFrame([preference(rng, "home") for _ in range(8)]).to_parquet(folder / "validation.parquet")
    probes = pd.DataFrame([{"example": i, "prompt": r["prompt"], "response_type": t, "response": r[t]}
                           for i, r in enumerate(preference(rng, "home") for _ in range(4))
                           for t in ("chosen", "rejected")])  # fmt: skip
    probes.to_parquet(folder / "probes.parquet")
    return folder


def run(model_dir, folder, out, cfg):
    return finetune(model_dir, folder / "train.parquet", "toy_pref", cfg, 1e-3, 0, out / "ft", out / "st", "dpo",
                    validation_path=folder / "validation.parquet")  # fmt: skip


def test_a_dpo_run_probes_validates_and_resumes_from_its_cached_reference(tiny_model_dir, pairs, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    probes = {"every": 3, "examples": 4, "path": str(pairs / "probes.parquet"), "eos": True, "argmax_of": "chosen"}
    cfg = {**CFG, "probes": probes}
    whole = run(tiny_model_dir, pairs, tmp_path / "a", cfg)
    assert whole["steps"] == 12 and whole["dpo_reference"] == "cached"
    # The validation loss is DPO's, per pair: below log 2 once the chosen responses gain on the rejected ones.
    assert 0 < whole["validation"]["loss"] < 0.7
    rows = pd.read_parquet(tmp_path / "a" / "ft" / "probes.parquet")
    assert set(rows["response_type"]) == {"chosen", "rejected", "argmax"}
    assert sorted(rows["step"].unique()) == [0, 3, 6, 9, 12]
    wide = rows.pivot_table(index=["step", "example"], columns="response_type", values="logp")
    assert (wide["argmax"] >= wide["chosen"]).all()

    st = tmp_path / "b" / "st"
    with monkeypatch.context() as m:
        signal_at_step(m, 5)
        with pytest.raises(signals.Interrupted):
            run(tiny_model_dir, pairs, tmp_path / "b", cfg)
    cached = torch.load(st / REFERENCE_FILE, weights_only=True)
    assert cached["train"].shape == (24, 2) and cached["validation"].shape == (8, 2)
    # The resumed run reads the reference log-probs from the state folder instead of a pass over every pair.
    from ptft.finetune.methods import dpo

    def recompute(*args, **kwargs):
        raise AssertionError("the reference log-probs were computed again")

    with monkeypatch.context() as m:
        m.setattr(dpo, "reference_logps", recompute)
        resumed = run(tiny_model_dir, pairs, tmp_path / "b", cfg)
    assert resumed["steps"] == 12 and resumed["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-4)
    assert resumed["validation"]["loss"] == pytest.approx(whole["validation"]["loss"], rel=1e-4)
    b = pd.read_parquet(tmp_path / "b" / "ft" / "probes.parquet")
    pd.testing.assert_frame_equal(b.sort_values(["step", "example", "response_type"]).reset_index(drop=True),
                                  rows.sort_values(["step", "example", "response_type"]).reset_index(drop=True),
                                  atol=1e-4, rtol=0)  # fmt: skip


def test_a_preference_task_refuses_a_method_that_cannot_train_on_it(tiny_model_dir, pairs, tmp_path):
    with pytest.raises(ValueError, match="task 'toy_pref' needs method full, lora, dpo or extend, got 'instruct'"):
        finetune(tiny_model_dir, pairs / "train.parquet", "toy_pref", CFG, 1e-3, 0, tmp_path / "ft", tmp_path / "st",
                 "instruct")  # fmt: skip
