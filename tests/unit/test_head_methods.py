"""The LP-FT study's five methods on a classifier head: each trains and is evaluated by its own head, on a
random-init RoBERTa and a random-init causal LM (GPT-NeoX) saved in local folders."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.tiny_classifiers import write_base
from ptft.data import declared
from ptft.finetune import heads
from ptft.finetune.train import finetune

GOOD = ["good", "great", "fine", "nice", "happy", "bright"]
BAD = ["bad", "awful", "poor", "sad", "dull", "grim"]
FILLER = ["the", "a", "day", "film", "story", "was", "is", "very", "so", "and", "plot", "cast"]
SENTIMENT = {"labels": ["negative", "positive"], "template": "{text}", "hub_id": "test/sentiment"}
CFG = {"epochs": 10, "batch_size": 8, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.0, "max_length": 32,
       "max_steps": None, "format": "default", "save_every": 100, "precision": "fp32", "batching": "grouped",
       "gradient_checkpointing": False, "max_grad_norm": 1.0, "peak_tflops": None, "snapshots": None,
       "lp": {"folds": 3, "cs": 5, "max_iter": 1000, "batch_size": 16},
       "lpft": {"l2": 0.001, "max_iter": 500, "batch_size": 16, "folds": 3, "cs": 5},
       "lora": {"r": 4, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear", "save": "merged"},
       "lp_lora": {"r": 4, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear", "save": "merged",
                   "folds": 3, "cs": 5, "max_iter": 1000, "batch_size": 16}}  # fmt: skip
LRS = {"lp": 0.0, "full": 3e-3, "lpft": 1e-3, "lora": 3e-3, "lp_lora": 1e-3}


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 5) + [rng.choice(GOOD if label else BAD)]
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(autouse=True)
def sentiment_task(declared_registry):
    declared.declare({"sentiment": SENTIMENT})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("sentiment")
    for split, n in (("train", 96), ("validation", 32), ("eval", 48)):
        rows = [{"idx": i, "text": sentence(rng, i % 2), "label": i % 2} for i in range(n)]
        pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet")
    (folder / "data" / "eval").mkdir(parents=True)
    pd.read_parquet(folder / "eval.parquet").to_parquet(folder / "data" / "eval" / "sentiment.parquet")
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    torch.manual_seed(0)
    texts = [" ".join(GOOD + BAD + FILLER)] * 4
    return {f: write_base(f, tmp_path_factory.mktemp(f), texts) for f in ("roberta", "gpt_neox")}


def run(base, data, tmp_path, method):
    return finetune(base, data / "train.parquet", "sentiment", CFG, LRS[method], 0, tmp_path / method / "out",
                    tmp_path / method / "state", method, validation_path=data / "validation.parquet")  # fmt: skip


@pytest.mark.parametrize("family", ["roberta", "gpt_neox"])
def test_every_method_trains_and_is_scored_by_its_head(bases, data, tmp_path, family):
    from ptft.evaluate.run import evaluate_model

    summaries = {m: run(bases[family], data, tmp_path, m) for m in LRS}
    lp, lpft, lp_lora = summaries["lp"], summaries["lpft"], summaries["lp_lora"]
    # LP fits the head without a step; the keyword task is linearly separable in any features that see the word.
    assert lp["steps"] == 0 and lp["n_trainable_parameters"] == 0
    assert lp["head_norm_lp"] > lp["head_norm_init"]
    for s in (lpft, lp_lora):  # the same head is fitted before their training starts
        assert s["head_norm_lp"] == pytest.approx(lp["head_norm_lp"], rel=1e-6) and s["steps"] > 0
    assert summaries["lora"]["n_trainable_parameters"] < summaries["full"]["n_trainable_parameters"]
    for method, s in summaries.items():
        if method != "lp":
            first, last = s["final_loss"], s["validation"]["loss"]
            assert np.isfinite(first) and np.isfinite(last)
        model, tok = heads.load_classifier(tmp_path / method / "out" / "model", 2)
        assert model.config.ptft_head == "linear"
        meta = {"model": f"ft/{method}", "checkpoint": family, "train_task": "sentiment", "method": method,
                "lr": LRS[method], "seed": 0, "shots": 0}  # fmt: skip
        evaluations = [{"eval_set": "sentiment", "relation": "in-domain", "formats": ["default"]}]
        df = evaluate_model(tmp_path / method / "out" / "model", meta, evaluations, data / "data",
                            {"batch_size": 16}, seed=0)  # fmt: skip
        assert len(df) == 48 and set(df["metric"]) == {"accuracy"}
        probs = np.exp(np.array(df["label_logprobs"].tolist()))
        assert probs.shape == (48, 2) and np.allclose(probs.sum(1), 1)
        predicted = np.array(["negative", "positive"])[probs.argmax(1)]
        assert list(predicted) == list(df["prediction"])
        accuracy = df["score"].mean()
        if method == "full":  # every weight trained on a task one word decides
            assert accuracy >= 0.9, (method, accuracy)


def test_lp_reports_the_cross_validated_head_and_its_norm(bases, data, tmp_path):
    s = run(bases["roberta"], data, tmp_path, "lp")
    model, _ = heads.load_classifier(tmp_path / "lp" / "out" / "model", 2)
    w = heads.head_layer(model).weight.detach().double()
    assert float(w.norm()) == pytest.approx(s["head_norm_lp"], rel=1e-5)
    assert torch.allclose(w[0], -w[1])  # two classes: the least-norm pair of rows of one log-odds vector
    assert s["lp_c"] > 0 and 0.5 <= s["lp_train_accuracy"] <= 1.0
    assert s["validation"]["loss"] < np.log(2) + 0.05


def test_a_label_word_task_cannot_take_the_head_methods(bases, data, tmp_path):
    with pytest.raises(ValueError, match="lp fits a classifier head"):
        finetune(bases["roberta"], data / "train.parquet", "toy_nli", CFG, 0.0, 0, tmp_path / "o", tmp_path / "s", "lp")


def test_a_set_scored_by_matthews_correlation_gets_it_over_the_whole_set(bases, data, tmp_path):
    """A declared dataset with ``metric: mcc`` (CoLA) is scored by the head and aggregated as one corpus value."""
    from sklearn.metrics import matthews_corrcoef

    from ptft.aggregate.performance import performance_table
    from ptft.evaluate.run import evaluate_model

    declared.declare({"sentiment_mcc": {**SENTIMENT, "metric": "mcc"}})
    pd.read_parquet(data / "eval.parquet").to_parquet(data / "data" / "eval" / "sentiment_mcc.parquet")
    run(bases["roberta"], data, tmp_path, "full")
    meta = {"model": "ft/full", "checkpoint": "roberta", "train_task": "sentiment", "method": "full", "lr": 3e-3,
            "seed": 0, "shots": 0}  # fmt: skip
    evaluations = [{"eval_set": "sentiment_mcc", "relation": "in-domain", "formats": ["default"]}]
    df = evaluate_model(tmp_path / "full" / "out" / "model", meta, evaluations, data / "data", {"batch_size": 16}, 0)
    assert set(df["metric"]) == {"mcc"} and len(df) == 48
    perf = performance_table(df, {"checkpoints": []}, "s", 200, 0.95, 0)
    assert perf["value"].iloc[0] == pytest.approx(matthews_corrcoef(df["gold"], df["prediction"]))
    assert perf["ci_low"].iloc[0] <= perf["value"].iloc[0] <= perf["ci_high"].iloc[0]
