"""End-to-end on the real-data path, offline: hub-schema dataset files under ``data.data_dir``
and a hub checkpoint suite served from a Hugging Face cache in the hub's layout
(``HF_HUB_OFFLINE=1``): registry -> load -> subsample -> format -> fine-tune -> evaluate -> tables.
"""

import datasets
import pandas as pd
import pytest
import yaml

from conftest import run_snakemake
from helpers.fake_hub import commit_of, write_model_repo
from helpers.hub_fixtures import write_hub_dataset
from ptft.aggregate.performance import validate_performance
from ptft.io import read_json

pytestmark = pytest.mark.slow

FIXTURES = {
    "mnli": "glue_mnli",
    "mnli_matched": "glue_mnli",
    "rte": "glue_rte",
    "xsum": "xsum",
    "tulu": "tulu_v2",
    "boolq": "boolq",
    "arc_easy": "arc_easy",
}
TARGET = "results/real/tables/performance.parquet"
RELATIONS = {
    "mnli": {"in-domain": ["mnli_matched"], "ood": ["rte"], "cross-task": ["xsum"]},
    "tulu": {"in-domain": ["boolq"], "pretraining": ["arc_easy"]},
}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("real_path")
    for name, key in FIXTURES.items():
        write_hub_dataset(key, work / "hub_data" / name, rows=24, seed=5)
    hf_home = work / "hf"
    write_model_repo(hf_home, "org/tiny", {"step4": tiny_model_dir, "step12": tiny_model_dir, "main": tiny_model_dir})
    (work / "revisions.txt").write_text("main\nstep4\nstep12\n")
    config = {
        "study": "real",
        "checkpoints": {
            "suite": "hub",
            "hub": {
                "model": "org/tiny",
                "steps": [4],
                "revision_list": str(work / "revisions.txt"),
                "final": {"revision": "main", "step": 12},
                "tokens_per_step": 100,
            },
        },
        "data": {
            "data_dir": str(work / "hub_data"),
            "train_size": 16,
            "max_eval_examples": 6,
            "fewshot_pool_size": 4,
            "per_task": {"tulu": {"train_fraction": 0.5}},
        },
        "train_tasks": ["mnli", "tulu"],
        "relations": RELATIONS,
        "finetune": {
            "lrs": [0.001],
            "batch_size": 4,
            "max_steps": 2,
            "max_length": 256,
            "per_task": {"tulu": {"methods": ["instruct"], "lrs": [0.002]}},
        },
        "evaluate": {
            "formats": ["default", "instruct"],
            "format_study_sets": ["mnli_matched"],
            "shots": 1,
            "finetuned_shots": 1,
            "batch_size": 4,
            "max_new_tokens": {"generation": 4},
        },
        "aggregate": {"bootstrap": {"resamples": 100}},
    }
    (work / "study.yaml").write_text(yaml.safe_dump(config))
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # The tables these tests read; the figures and report pages are the micro test's.
    out = run_snakemake(work, work / "study.yaml", TARGET, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-6000:]
    return work, work / "results/real"


def test_pointers_pin_the_hub_commits(real_run):
    _, results = real_run
    manifest = read_json(results / "checkpoints/manifest.json")
    got = {c["name"]: (c["revision"], c["commit"], c["step"], c["tokens"]) for c in manifest["checkpoints"]}
    assert got == {
        "step4": ("step4", commit_of("org/tiny", "step4"), 4, 400),
        "final": ("main", commit_of("org/tiny", "main"), 12, 1200),
    }


def test_training_sets_follow_the_recipe(real_run):
    work, results = real_run
    mnli = pd.read_parquet(results / "data/train/mnli.parquet")
    raw = datasets.load_dataset("parquet", data_files={"train": str(work / "hub_data/mnli/train.parquet")})["train"]
    expected = raw.shuffle(seed=42).select(range(16))
    assert list(mnli["premise"]) == expected["premise"]
    assert list(mnli["label"]) == expected["label"]  # MNLI's ClassLabel order is the label-word order
    tulu = pd.read_parquet(results / "data/train/tulu.parquet")
    assert len(tulu) == 12  # train_fraction 0.5 of 24
    summary = read_json(results / "finetune/final/tulu/instruct/lr0.002/seed0/summary.json")
    assert summary["steps"] == 2 and summary["method"] == "instruct"


def test_relation_table_drives_what_each_model_is_scored_on(real_run):
    _, results = real_run
    perf = pd.read_parquet(results / "tables/performance.parquet")
    validate_performance(perf)
    base = perf[perf["method"] == "base"]
    assert set(base["eval_set"]) == {"mnli_matched", "rte", "xsum", "boolq", "arc_easy"}
    assert set(base["relation"]) == {"pretraining"} and (base["shots"] == 1).all()
    ft = perf[perf["method"] != "base"]
    for task, relations in RELATIONS.items():
        rows = ft[ft["train_task"] == task]
        expected = {(e, rel) for rel, sets in relations.items() for e in sets}
        assert set(zip(rows["eval_set"], rows["relation"], strict=True)) == expected, task
    assert set(ft.loc[ft["train_task"] == "tulu", "method"]) == {"instruct"}
    # the format study set gets every format, the others the first only
    assert set(perf.loc[perf["eval_set"] == "mnli_matched", "format"]) == {"default", "instruct"}
    assert set(perf.loc[perf["eval_set"] != "mnli_matched", "format"]) == {"default"}
    # 2 checkpoints x (1 base + 2 fine-tuned) models
    assert perf["checkpoint"].nunique() == 2 and ft.groupby("checkpoint")["train_task"].nunique().eq(2).all()


def test_multiple_choice_scores_are_acc_and_acc_norm(real_run):
    _, results = real_run
    perf = pd.read_parquet(results / "tables/performance.parquet")
    mc = perf[perf["eval_set"].isin(["boolq", "arc_easy"])]
    assert set(mc["metric"]) == {"acc", "acc_norm"} and (mc["n"] == 6).all()
    pred = pd.read_parquet(results / "eval/base/final/predictions.parquet")
    arc = pred[(pred["eval_set"] == "arc_easy") & (pred["metric"] == "acc")]
    for row in arc.itertuples():
        lls = list(row.label_logprobs)
        assert len(lls) >= 3 and row.score == float(row.prediction == row.gold)
    ood = pred[(pred["eval_set"] == "rte")]
    assert set(ood["gold"]) <= {"entailment", "neutral"}


def test_second_run_does_nothing(real_run):
    work, _ = real_run
    env = {"HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    out = run_snakemake(work, work / "study.yaml", TARGET, "-n", env=env)
    assert out.returncode == 0 and "Nothing to be done" in out.stdout + out.stderr
