"""The LP-FT study file (workflow/studies/lpft-roberta-base.yaml): its datasets on local copies in the hub schema, and
its settings against the paper's.

Each declared dataset is written in its hub schema (helpers.hub_fixtures) to ``<tmp>/<name>/``, the folder
``data.data_dir`` would give it, and goes through the data stage: training subsample, validation split (the last
ceil(10 %) of the training split), scored set and few-shot pool, canonical records, rendered input.
"""

import copy
import math

import pandas as pd
import pytest
import yaml
from datasets import ClassLabel

from conftest import ROOT
from helpers.hub_fixtures import HUB_DATASETS, write_hub_dataset
from ptft.config import validate_study
from ptft.data import declared
from ptft.data.prepare import eval_and_fewshot, subsample_train, validation_split
from ptft.data.prompts import render_prompt
from ptft.data.registry import get_dataset

STUDY = ROOT / "workflow/studies/lpft-roberta-base.yaml"
RAW = yaml.safe_load(STUDY.read_text())
ROWS = 20

# declared dataset -> hub fixture key
FIXTURE = {
    "superglue_boolq": "boolq",
    "cb": "superglue_cb",
    "superglue_rte": "superglue_rte",
    "wic": "superglue_wic",
    "wsc": "superglue_wsc_fixed",
    "cola": "glue_cola",
    "sst2": "glue_sst2",
    "mrpc": "glue_mrpc",
    "amazon": "boss_amazon",
    "dynasent": "boss_dynasent",
    "semeval": "boss_semeval",
    "sst5": "boss_sst5",
    "pubmed_rct": "pubmed_rct20k",
}
NAMES = list(FIXTURE)

# The paper's batch size and lr per dataset and method (the release's run_<dataset>_roberta.sh scripts).
PAPER = {
    "cb": {"full": (16, 5e-5), "lpft": (8, 5e-6), "lora": (16, 1e-3), "lp_lora": (8, 1e-4)},
    "superglue_rte": {"full": (16, 1e-5), "lpft": (8, 1e-5), "lora": (16, 1e-3), "lp_lora": (8, 5e-4)},
    "superglue_boolq": {"full": (32, 1e-5), "lpft": (8, 1e-5), "lora": (32, 5e-4), "lp_lora": (8, 5e-4)},
    "wic": {"full": (32, 1e-5), "lpft": (8, 1e-5), "lora": (16, 1e-3), "lp_lora": (8, 1e-3)},
    "wsc": {"full": (16, 1e-3), "lpft": (8, 1e-3), "lora": (16, 1e-4), "lp_lora": (8, 1e-4)},
    "cola": {"full": (32, 5e-5), "lpft": (8, 1e-5), "lora": (16, 1e-3), "lp_lora": (8, 1e-3)},
    "sst2": {"full": (32, 1e-5), "lpft": (8, 1e-5), "lora": (32, 5e-4), "lp_lora": (8, 1e-3)},
    "mrpc": {"full": (16, 1e-5), "lpft": (8, 1e-5), "lora": (32, 1e-5), "lp_lora": (8, 1e-3)},
    "amazon": {"full": (16, 1e-5), "lpft": (8, 1e-6), "lora": (16, 1e-3), "lp_lora": (8, 5e-4)},
    "pubmed_rct": {"full": (8, 5e-6), "lpft": (8, 5e-6), "lora": (8, 5e-4), "lp_lora": (8, 1e-3)},
}
TABLE = [(task, method, *values) for task, methods in PAPER.items() for method, values in methods.items()]


@pytest.fixture(autouse=True)
def clean_registry(declared_registry):
    yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpft_data")
    for name, key in FIXTURE.items():
        write_hub_dataset(key, root / name, rows=ROWS, seed=0)
    return root


def test_the_study_validates_and_declares_every_dataset_it_reads():
    config = validate_study(copy.deepcopy(RAW))
    assert declared.declare(config["datasets"]) == NAMES
    read = {*config["train_tasks"], *(s for rel in config["relations"].values() for sets in rel.values() for s in sets)}
    assert read == set(NAMES)
    ft = config["finetune"]
    assert ft["methods"] == ["lp", "full", "lpft", "lora", "lp_lora"] and ft["seeds"] == [0, 1, 2, 3, 4]
    assert (ft["epochs"], ft["max_length"], ft["optimizer"], ft["schedule"]) == (10, 128, "adamw", "linear")
    assert (ft["classifier_head"], ft["classifier_dropout"], ft["warmup_ratio"]) == ("linear", 0.1, 0.0)
    assert ft["snapshots"]["per_epoch"] and ft["snapshots"]["select"] == "best_validation"
    for method in ("lora", "lp_lora"):
        lora = ft[method]
        assert (lora["r"], lora["alpha"], lora["dropout"], lora["target_modules"]) == (8, 8, 0.0, ["query", "value"])
    assert (ft["lp"]["folds"], ft["lp"]["cs"], ft["lp_lora"]["folds"], ft["lp_lora"]["cs"]) == (5, 10, 5, 10)


def test_amazon_is_scored_on_the_ood_sets_and_every_other_task_on_its_own_test_set():
    relations = copy.deepcopy(RAW["relations"])
    assert relations.pop("amazon") == {"in-domain": ["amazon"], "ood": ["dynasent", "semeval", "sst5"]}
    assert relations == {task: {"in-domain": [task]} for task in relations}
    assert sorted(relations) == sorted(set(RAW["train_tasks"]) - {"amazon"})


@pytest.mark.parametrize("task, method, batch_size, lr", TABLE, ids=[f"{t}-{m}" for t, m, *_ in TABLE])
def test_batch_size_and_lr_are_the_papers(task, method, batch_size, lr):
    assert RAW["finetune"]["per_task"][task]["per_method"][method] == {"batch_size": batch_size, "lrs": [lr]}


def test_every_trained_task_and_method_has_the_papers_settings():
    per_task = RAW["finetune"]["per_task"]
    assert sorted(per_task) == sorted(RAW["train_tasks"]) == sorted(PAPER)
    assert all(sorted(per_task[t]["per_method"]) == sorted(PAPER[t]) for t in PAPER)


@pytest.mark.parametrize("name", NAMES)
def test_the_declaration_matches_its_hub_schema(name):
    entry, fixture = RAW["datasets"][name], HUB_DATASETS[FIXTURE[name]]
    assert (entry["hub_id"], entry.get("hub_config"), entry.get("revision")) == (
        fixture["hub_id"], fixture["config"], fixture["revision"])  # fmt: skip
    spec = get_dataset(declared.declare({name: entry})[0])
    assert set(spec.splits) <= set(fixture["splits"])
    assert spec.eval_split not in fixture["unlabeled_splits"]  # the scored split has labels
    label = fixture["features"][spec.label_column]
    if isinstance(label, ClassLabel):  # the head's rows follow the hub's label indices
        assert entry["labels"] == label.names and "label_map" not in entry
    elif "label_map" in entry:
        assert {entry["label_map"][v] for v in fixture["label_values"]} == set(entry["labels"])
    else:
        assert fixture["label_values"] == list(range(len(entry["labels"])))


@pytest.mark.parametrize("name", NAMES)
def test_the_data_stage_reads_the_hub_schema(name, data_dir):
    config = validate_study(copy.deepcopy(RAW))
    declared.declare(config["datasets"])
    spec, folder, data = get_dataset(name), data_dir / name, config["data"]
    task = spec.task
    if spec.train_split:
        raw_train = pd.read_parquet(folder / f"{spec.train_split}.parquet")
        if spec.validation_fraction is not None:  # the paper's rule: the last ceil(10 %) of train
            start = ROWS - math.ceil(0.1 * ROWS)
            size = data["per_task"].get(name, {}).get("train_size", data["train_size"])
            valid = validation_split(spec, folder, size, 42, data["validation_size"])
            assert list(valid["idx"]) == list(range(start, ROWS))
            train = subsample_train(spec, folder, size, seed=42)
            assert sorted(train["idx"]) == list(range(start))
        else:  # PubMed: its validation examples follow the training ones in the shuffled split
            assert data["per_task"][name]["train_size"] + data["validation_size"] == 176642  # the hub's train rows
            valid = validation_split(spec, folder, ROWS - 5, 42, 5)
            train = subsample_train(spec, folder, ROWS - 5, seed=42)
            assert len(valid) == 5 and sorted([*train["idx"], *valid["idx"]]) == list(range(ROWS))
        _check_records(spec, train, raw_train)
        _check_records(spec, valid, raw_train)
    scored, pool = eval_and_fewshot(spec, folder, data["max_eval_examples"], data["fewshot_pool_size"], seed=0)
    assert len(pool) == data["fewshot_pool_size"]
    # The test set is whole, unless the pool has to come from it (an OOD set with its test split only).
    assert len(scored) == ROWS - (len(pool) if spec.fewshot_split == spec.eval_split else 0)
    _check_records(spec, scored, pd.read_parquet(folder / f"{spec.eval_split}.parquet"))
    assert set(task.labels[i] for i in scored["label"]) | set(task.labels[i] for i in pool["label"]) == set(
        task.labels)  # fmt: skip


def _check_records(spec, frame, raw):
    """Canonical records: the template's fields from the right columns, labels in range and as the hub's."""
    task = spec.task
    assert set(task.fields) <= set(frame.columns)
    for record in frame.to_dict("records"):
        row = raw.iloc[record["idx"]]
        assert all(record[f] == row[spec.columns.get(f, f)] for f in task.fields)
        assert 0 <= record["label"] < len(task.labels)
        value = row[spec.label_column]
        expected = task.labels.index(spec.label_map[value]) if spec.label_map else int(value)
        assert record["label"] == expected
        text = render_prompt(task, record, "default")
        assert "{" not in text and all(str(record[f]) in text for f in task.fields)


def _render(name: str, split: str, data_dir, row: int = 0) -> tuple[str, pd.Series]:
    declared.declare(RAW["datasets"])
    spec = get_dataset(name)
    raw = pd.read_parquet(data_dir / name / f"{split}.parquet").iloc[row]
    record = {f: raw[spec.columns.get(f, f)] for f in spec.task.fields}
    return render_prompt(spec.task, record, "default"), raw


def test_inputs_are_the_papers(data_dir):
    text, r = _render("wic", "validation", data_dir)
    assert text == f"{r['sentence1']} {r['sentence2']} Does {r['word']} have the same meaning in both sentences?"
    text, r = _render("cb", "train", data_dir)
    assert text == f"{r['premise']}</s></s>{r['hypothesis']}"  # RoBERTa's encoding of a pair: <s> a </s></s> b </s>
    text, r = _render("superglue_boolq", "train", data_dir)
    assert text == f"{r['question']}</s></s>{r['passage']}"
    text, r = _render("wsc", "train", data_dir)
    assert text == f"{r['span2_text']}: {r['text']}</s></s>{r['span1_text']}"
    text, r = _render("amazon", "test", data_dir)
    assert text == r["Text"]
    text, r = _render("pubmed_rct", "test", data_dir, row=2)
    assert text == r["text"] and r["label"] == "methods"
    assert get_dataset("cola").task.metric == "mcc" and get_dataset("sst2").task.metric == "accuracy"
