"""``ptft evaluate`` after a failure or a stop signal: it reuses the finished (eval set, format) parts."""

import json
import logging
import os
import signal

import pandas as pd
import pytest

from helpers.eval_data import write_eval_data
from ptft.cli import build_parser
from ptft.evaluate import run

EVALUATIONS = [{"eval_set": "toy_nli", "relation": "in-domain", "formats": ["default"]},
               {"eval_set": "toy_summary", "relation": "cross-task", "formats": ["default"]}]  # fmt: skip
META = {"model": "ft/x", "checkpoint": "x", "train_task": "toy_nli", "method": "full", "lr": 0.001, "seed": 0,
        "shots": 2}  # fmt: skip
CFG = {"batch_size": 4, "max_new_tokens": {"classification": 5, "generation": 4}, "stop": "\n",
       "rouge_stemmer": False}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_eval_data(tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, data_dir):
    return run.evaluate_model(
        tiny_model_dir, run.model_metadata(tiny_model_dir, META), EVALUATIONS, data_dir, CFG, seed=0
    )


def evaluate(model_dir, data_dir, out, state_dir, cfg=CFG):
    args = build_parser().parse_args([
        "evaluate", "--model-dir", str(model_dir), "--model", json.dumps(META),
        "--evaluations", json.dumps(EVALUATIONS), "--data-dir", str(data_dir), "--config", json.dumps(cfg),
        "--seed", "0", "--out", str(out), "--state-dir", str(state_dir)])  # fmt: skip
    args.func(args)


def count_parts(monkeypatch, fail_on=None, signal_on=None) -> list[str]:
    """The eval sets of the parts scored; the part of ``fail_on`` raises, the one of ``signal_on`` gets SIGUSR1."""
    scored, real = [], run.score_part

    def score_part(model, tokenizer, meta, ev, fmt, *args):
        scored.append(ev["eval_set"])
        if ev["eval_set"] == fail_on:
            raise RuntimeError("out of memory")
        if ev["eval_set"] == signal_on:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(model, tokenizer, meta, ev, fmt, *args)

    monkeypatch.setattr(run, "score_part", score_part)
    return scored


def test_a_failed_job_rescored_only_its_unfinished_part(tiny_model_dir, data_dir, uninterrupted, tmp_path,
                                                        monkeypatch, caplog):  # fmt: skip
    out, st = tmp_path / "eval" / "predictions.parquet", tmp_path / ".state" / "evaluate" / "ft" / "x"
    with monkeypatch.context() as m:
        scored = count_parts(m, fail_on="toy_summary")
        with pytest.raises(RuntimeError, match="out of memory"):
            evaluate(tiny_model_dir, data_dir, out, st)
    assert scored == ["toy_nli", "toy_summary"] and not out.exists()
    assert [p.name.split(".")[:2] for p in st.glob("*.parquet")] == [["toy_nli", "default"]]

    scored = count_parts(monkeypatch)
    with caplog.at_level(logging.INFO):
        evaluate(tiny_model_dir, data_dir, out, st)
    assert scored == ["toy_summary"]  # the finished part was not scored again
    assert "reusing finished part toy_nli default of ft/x" in caplog.text
    pd.testing.assert_frame_equal(pd.read_parquet(out), uninterrupted)
    assert not st.exists()  # the parts are removed once predictions.parquet holds them


def test_a_stop_signal_keeps_the_finished_parts_and_exits_128_plus_the_signal(
    tiny_model_dir, data_dir, uninterrupted, tmp_path, monkeypatch, caplog
):
    out, st = tmp_path / "predictions.parquet", tmp_path / "state"

    def ignored(*_):
        pass

    # Without the command's own handler, this one would take the signal and the job would go on to the end.
    previous = signal.signal(signal.SIGUSR1, ignored)
    try:
        with monkeypatch.context() as m, caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
            count_parts(m, signal_on="toy_summary")
            evaluate(tiny_model_dir, data_dir, out, st)
        assert signal.getsignal(signal.SIGUSR1) is ignored
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert f"stopped by SIGUSR1; the finished parts are kept in {st}" in caplog.text
    assert [p.name.split(".")[0] for p in st.glob("*.parquet")] == ["toy_nli"] and not out.exists()

    # Another scoring config is another fingerprint: nothing is reused.
    scored = count_parts(monkeypatch)
    evaluate(tiny_model_dir, data_dir, out, st, {**CFG, "rouge_stemmer": True})
    assert scored == ["toy_nli", "toy_summary"]
    pd.testing.assert_frame_equal(pd.read_parquet(out)[uninterrupted.columns].query("eval_set == 'toy_nli'"),
                                  uninterrupted.query("eval_set == 'toy_nli'"))  # fmt: skip
