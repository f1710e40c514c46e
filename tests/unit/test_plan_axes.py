"""The study's axes in the plan: training-set sizes, runs from runs, trajectories (no Snakemake)."""

import copy

import pytest
import yaml

from conftest import ROOT
from ptft.config import validate_study
from ptft.data.prepare import subsample_train, write_toy_dataset
from ptft.data.registry import get_dataset
from ptft.plan import build_plan


def axes_config():
    return validate_study(yaml.safe_load((ROOT / "workflow/studies/toy-axes.yaml").read_text()))


def test_run_ids_carry_the_size_and_the_chain():
    plan = build_plan(axes_config())
    docs = [m for m in plan.training_runs if m.train_task == "toy_docs"]
    assert sorted({m.train_size for m in docs}) == [50, 150, 450] and len(docs) == 3 * 3
    small = next(m for m in docs if m.checkpoint == "step200" and m.train_size == 50)
    assert small.run == "step200/toy_docs/n50/full/lr0.001/seed0"
    assert plan.train_data_path("toy_docs", 50) == "results/toy-axes/data/train/toy_docs/n50.parquet"
    children = [m for m in plan.training_runs if m.train_task == "toy_summary"]
    assert len(children) == 3 * 2 and all(m.parent is not None for m in children)
    child = next(m for m in children if m.checkpoint == "step125" and m.seed == 1)
    # The chain reads left to right; the pre-training checkpoint stays the row's checkpoint.
    assert child.run == "step125/toy_paraphrase/full/lr0.001/seed1/then/toy_summary/full/lr0.001/seed1"
    assert child.parent.run == "step125/toy_paraphrase/full/lr0.001/seed1" and child.checkpoint == "step125"
    assert child.metadata()["parent"] == "ft/step125/toy_paraphrase/full/lr0.001/seed1"
    assert plan.start_path(child) == plan.run_file(child.parent.run, "model")
    assert plan.start_path(child.parent) == plan.checkpoint_path("step125")
    assert plan.training_run(child.run) == child
    # Trajectories: every run of the tasks with snapshots; the keep setting is not the run's.
    assert {m.train_task for m in plan.snapshot_runs} == {"toy_paraphrase", "toy_summary"}
    cfg = plan.run_config("toy_paraphrase", "full")
    assert cfg["snapshots"] == {"every": 5, "steps": None, "per_epoch": False, "start": True, "select": "last",
                                "metric": "loss"}  # fmt: skip
    assert "from" not in plan.run_config("toy_summary", "full")
    # Dissecting measures each corpus run against its base checkpoint, and each snapshot.
    assert len([m for m in plan.dissect_models if m.is_base]) == 3 and len(plan.dissect_models) == 3 + 9


def test_adding_a_size_or_a_parent_keeps_the_existing_runs():
    cfg = axes_config()
    before = {m.run for m in build_plan(cfg).training_runs}
    bigger = copy.deepcopy(cfg)
    bigger["data"]["per_task"]["toy_docs"]["train_sizes"].append(900)
    after = {m.run for m in build_plan(bigger).training_runs}
    assert before < after and {r for r in after - before} == {
        f"step{c}/toy_docs/n900/full/lr0.001/seed0" for c in (50, 125, 200)}  # fmt: skip


@pytest.mark.parametrize(
    "start, needle",
    [
        ({"task": "toy_qgen", "method": "full"}, "task 'toy_qgen' is not in train_tasks"),
        ({"task": "toy_paraphrase", "method": "lora"}, "method 'lora' is not a method of 'toy_paraphrase'"),
        ({"task": "toy_paraphrase", "method": "full", "lr": 0.5}, "lr 0.5 is not an lr of 'toy_paraphrase'"),
        ({"task": "toy_summary", "method": "full"}, "cannot start from runs of its own task and method"),
    ],
)
def test_a_bad_start_names_the_key(start, needle):
    cfg = axes_config()
    cfg["finetune"]["per_task"]["toy_summary"]["from"] = start
    with pytest.raises(ValueError, match="finetune.per_task.toy_summary.from") as err:
        build_plan(cfg)
    assert needle in str(err.value)


def test_a_cycle_and_a_seed_without_parent_are_refused():
    cfg = axes_config()
    cfg["finetune"]["per_task"]["toy_paraphrase"]["from"] = {"task": "toy_summary", "method": "full"}
    with pytest.raises(ValueError, match="cycle"):
        build_plan(cfg)
    cfg = axes_config()
    cfg["finetune"]["per_task"]["toy_summary"]["seeds"] = [0, 3]
    with pytest.raises(ValueError, match=r"seeds \[3\] of 'toy_summary' have no run of 'toy_paraphrase'"):
        build_plan(cfg)


def test_a_start_from_checkpoint_and_from_a_run_gives_both():
    cfg = axes_config()
    cfg["finetune"]["per_task"]["toy_summary"]["from"] = ["checkpoint", {"task": "toy_paraphrase", "method": "full"}]
    runs = [m for m in build_plan(cfg).training_runs if m.train_task == "toy_summary"]
    assert len(runs) == 2 * 3 * 2 and sum(m.parent is None for m in runs) == 3 * 2


def test_best_validation_needs_a_validation_split_and_schema_rejects_unknown_keys():
    cfg = axes_config()
    cfg["finetune"]["per_task"]["toy_paraphrase"]["snapshots"]["select"] = "best_validation"
    plan = build_plan(cfg)
    assert plan.needs_validation("toy_paraphrase") and not plan.needs_validation("toy_docs")
    raw = yaml.safe_load((ROOT / "workflow/studies/toy-axes.yaml").read_text())
    raw["finetune"]["per_task"]["toy_docs"]["snapshots"]["often"] = 3
    with pytest.raises(ValueError, match="finetune.per_task.toy_docs.snapshots"):
        validate_study(raw)


def test_train_sizes_are_nested_subsamples(tmp_path):
    spec = get_dataset("toy_docs")
    write_toy_dataset(spec, {"train": 300, "validation": 10, "test": 10}, 0, tmp_path)
    frames = {n: subsample_train(spec, tmp_path, n, 42) for n in (20, 100, 250)}
    assert [len(f) for f in frames.values()] == [20, 100, 250]
    # A larger sample extends a smaller one: the same examples, in the same order, then more.
    assert frames[100].head(20).equals(frames[20]) and frames[250].head(100).equals(frames[100])
