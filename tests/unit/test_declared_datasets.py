"""A classification dataset declared in a study file: registered by name, split by the paper's rule, checked early."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from ptft.data import declared, prepare
from ptft.data.registry import get_dataset

WIC = {
    "labels": ["no", "yes"],
    "template": "{sentence1} {sentence2} Does {word} have the same meaning in both sentences?",
    "hub_id": "aps/super_glue",
    "hub_config": "wic",
    "eval_split": "validation",
}


@pytest.fixture(autouse=True)
def clean_registry(declared_registry):
    yield


def wic_rows(n: int, start: int = 0) -> pd.DataFrame:
    # The hub schema of super_glue/wic (its Parquet export), written by the test.
    return pd.DataFrame({
        "word": [f"w{i}" for i in range(start, start + n)],
        "sentence1": [f"first sentence {i} ." for i in range(start, start + n)],
        "sentence2": [f"second sentence {i} ." for i in range(start, start + n)],
        "start1": [0] * n, "start2": [0] * n, "end1": [1] * n, "end2": [1] * n,
        "idx": list(range(start, start + n)),
        "label": [i % 2 for i in range(start, start + n)],
    })  # fmt: skip


def test_a_declared_dataset_is_a_task_of_its_labels_and_template():
    assert declared.declare({"wic": WIC}) == ["wic"]
    spec = get_dataset("wic")
    task = spec.task
    assert task.kind == "sequence_classification"
    assert task.fields == ("sentence1", "sentence2", "word")
    assert task.labels == ("no", "yes") and task.metric == "accuracy"
    assert spec.hub_id == "aps/super_glue" and spec.eval_split == "validation" and spec.validation_fraction == 0.1
    from ptft.data.prompts import render_prompt

    text = render_prompt(task, {"sentence1": "A .", "sentence2": "B .", "word": "bank"}, "default")
    assert text == "A . B . Does bank have the same meaning in both sentences?"


def test_the_validation_split_is_the_last_tenth_of_train_and_training_draws_from_the_rest(tmp_path):
    declared.declare({"wic": WIC})
    folder = tmp_path / "wic"
    folder.mkdir()
    wic_rows(554).to_parquet(folder / "train.parquet")  # WSC's size in the paper: 498 train + 56 validation
    wic_rows(40, start=1000).to_parquet(folder / "validation.parquet")
    spec = get_dataset("wic")
    valid = prepare.validation_split(spec, folder, size=None, seed=0, validation_size=500)
    assert list(valid["idx"]) == list(range(498, 554))
    train = prepare.subsample_train(spec, folder, size=10_000, seed=0)
    assert len(train) == 498 and set(train["idx"]) == set(range(498))
    small = prepare.subsample_train(spec, folder, size=100, seed=0)
    assert len(small) == 100 and small["idx"].max() < 498
    scored, pool = prepare.eval_and_fewshot(spec, folder, None, 5, 0)
    assert set(scored["word"]) | set(pool["word"]) == {f"w{i}" for i in range(1000, 1040)}  # the original validation
    assert not set(scored["word"]) & set(pool["word"])
    assert scored.iloc[0]["label"] in (0, 1)


def test_a_label_map_reads_raw_values_from_yaml_or_from_its_json_copy(tmp_path):
    entry = {**WIC, "labels": ["negative", "positive"], "label_map": {0: "negative", 1: "positive"}}
    declared.declare({"wic": entry})
    spec = get_dataset("wic")
    again, _ = declared.build("wic", json.loads(json.dumps(entry))), None
    assert again[1] == spec
    folder = tmp_path / "wic"
    folder.mkdir()
    wic_rows(20).to_parquet(folder / "train.parquet")
    train = prepare.subsample_train(spec, folder, size=5, seed=0)
    assert set(train["label"]) <= {0, 1}


@pytest.mark.parametrize(
    "entry, key",
    [
        ({**WIC, "lables": ["a", "b"]}, "datasets.wic.lables"),
        ({**WIC, "labels": ["yes"]}, "datasets.wic.labels"),
        ({**WIC, "labels": ["yes", "yes"]}, "datasets.wic.labels"),
        ({**WIC, "template": "no fields here"}, "datasets.wic.template"),
        ({**WIC, "metric": "f1"}, "datasets.wic.metric"),
        ({**WIC, "label_map": {0: "no", 1: "maybe"}}, "datasets.wic.label_map"),
        ({**WIC, "validation_fraction": 1.5}, "datasets.wic.validation_fraction"),
        ({k: v for k, v in WIC.items() if k != "hub_id"}, "datasets.wic.hub_id"),
    ],
)
def test_a_bad_declaration_stops_naming_its_key(entry, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        declared.declare({"wic": entry})


def test_a_declared_name_may_not_shadow_a_built_in_dataset():
    with pytest.raises(ValueError, match=r"datasets\.rte: 'rte' is a built-in dataset"):
        declared.declare({"rte": WIC})


def test_a_job_process_finds_the_study_s_datasets_in_its_environment():
    declared.export({"wic": WIC})
    assert json.loads(os.environ[declared.ENV]) == {"wic": WIC}
    code = "from ptft.data.registry import get_dataset; print(get_dataset('wic').task.fields)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "('sentence1', 'sentence2', 'word')"
    declared.export(None)
    assert declared.ENV not in os.environ


def test_a_later_study_s_declaration_of_a_name_replaces_an_earlier_one():
    declared.declare({"wic": WIC})
    declared.declare({"wic": {**WIC, "template": "{sentence1} / {sentence2} / {word}"}})
    assert get_dataset("wic").task.fields == ("sentence1", "sentence2", "word")
    assert get_dataset("wic").task.formats["default"] == "{sentence1} / {sentence2} / {word}"
