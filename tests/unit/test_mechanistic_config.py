"""The mechanistic study's configuration: PCFG datasets, the PCFG suite's checkpoints, per-task checkpoints and the
``mechanistic`` section, each wrong setting stopped when the plan is built (a dry run) with a message naming its key.

Each test edits a copy of workflow/studies/toy-mechanistic.yaml.
"""

import copy
import re

import pytest
import yaml

from conftest import ROOT
from ptft.config import validate_study
from ptft.data import declared
from ptft.data.registry import DATASETS
from ptft.pcfg.world import World, generate_splits
from ptft.plan import PCFG_BASELINE, build_plan, checkpoint_entries

STUDY = ROOT / "workflow/studies/toy-mechanistic.yaml"
RAW = yaml.safe_load(STUDY.read_text())


@pytest.fixture(autouse=True)
def clean_registry(declared_registry):
    yield


def study(edit=None) -> dict:
    """A validated copy of the toy study, after ``edit(raw)`` changed it in place."""
    raw = copy.deepcopy(RAW)
    if edit is not None:
        edit(raw)
    return validate_study(raw)


def plan_of(tmp_path, edit=None):
    return build_plan(study(edit), tmp_path)


def fails(tmp_path, edit, key: str, also: str | None = None) -> str:
    """The plan of the edited study raises a ValueError naming ``key`` (and ``also``); its message."""
    with pytest.raises(ValueError, match=re.escape(key)) as error:
        plan_of(tmp_path, edit)
    if also is not None:
        assert also in str(error.value)
    return str(error.value)


# --- PCFG datasets -------------------------------------------------------------------------------------------------


def test_a_pcfg_dataset_needs_the_pcfg_suite():
    config = {"checkpoints": {"suite": "toy"}, "datasets": {"count_a": {"source": "pcfg", "task": "count",
                                                                          "operand": "a"}}}  # fmt: skip
    with pytest.raises(ValueError, match=r"^datasets\.count_a: a pcfg dataset needs checkpoints\.suite: pcfg"):
        declared.study_block(config)
    with pytest.raises(ValueError, match=r"^datasets\.count_a: a pcfg dataset needs checkpoints\.suite: pcfg"):
        declared.study_block({"datasets": config["datasets"]})  # no checkpoints section at all
    # A declared dataset of another source does not need it, and is passed on unchanged.
    other = {"labels": ["no", "yes"], "template": "{text}", "hub_id": "x/y"}
    assert declared.study_block({"checkpoints": {"suite": "toy"}, "datasets": {"d": other}}) == {"d": other}


def test_the_study_block_copies_the_suites_world_into_each_pcfg_entry():
    config = study()
    block = declared.study_block(config)
    world = config["checkpoints"]["pcfg"]["world"]
    assert set(block) == {"count_a", "count_b", "count_a_scratch"}
    assert block["count_b"] == {"source": "pcfg", "task": "count", "operand": "b", "spurious": 1.0, "world": world}
    assert block["count_a"]["world"]["window"] == 24 and block["count_a"]["world"]["count_window"] == 16
    assert "world" not in config["datasets"]["count_a"]  # the study's own block is not changed


def test_a_pcfg_dataset_in_a_study_without_the_pcfg_suite_stops_the_plan(tmp_path):
    def toy_suite(raw):
        raw["checkpoints"] = {"suite": "toy"}

    fails(tmp_path, toy_suite, "datasets.count_a", also="checkpoints.suite: pcfg")


def test_the_world_is_the_suites_not_a_datasets(tmp_path):
    def world(raw):
        raw["datasets"]["count_b"]["world"] = {"window": 12}

    message = fails(tmp_path, world, "datasets.count_b.world")
    assert "checkpoints.pcfg.world" in message
    with pytest.raises(ValueError, match=r"datasets\.count_b\.world"):
        declared.study_block(study(world))


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("task", "sum", "datasets.count_b.task"),
        ("task", None, "datasets.count_b.task"),
        ("operand", "d", "datasets.count_b.operand"),
        ("operand", None, "datasets.count_b.operand"),
        ("spurious", 1.5, "datasets.count_b.spurious"),
        ("spurious", -0.1, "datasets.count_b.spurious"),
        ("spurious", "all", "datasets.count_b.spurious"),
        ("labels", ["x", "y"], "datasets.count_b.labels"),
    ],
)
def test_bad_pcfg_dataset_settings_name_their_key(tmp_path, key, value, named):
    def edit(raw):
        if value is None:
            del raw["datasets"]["count_b"][key]
        else:
            raw["datasets"]["count_b"][key] = value

    fails(tmp_path, edit, named)


@pytest.mark.parametrize(("task", "spurious"), [("token_at", 1.0), ("count", True)])
def test_spurious_needs_a_numeric_task_and_a_number(tmp_path, task, spurious):
    def edit(raw):
        raw["datasets"]["count_b"].update(task=task, spurious=spurious)

    fails(tmp_path, edit, "datasets.count_b.spurious")


def test_entries_of_the_same_task_operand_and_spurious_share_their_records(tmp_path):
    plan_of(tmp_path)
    a, scratch, b = DATASETS["count_a"], DATASETS["count_a_scratch"], DATASETS["count_b"]
    world = study()["checkpoints"]["pcfg"]["world"]  # the study's, with the schema's defaults
    assert world["grammar"] == {"seed": 0, "levels": 4, "per_level": 4, "rules": 2}
    assert a.pcfg == scratch.pcfg == {"world": world, "task": "count", "operand": "a", "spurious": 0.0}
    assert b.pcfg == {"world": world, "task": "count", "operand": "b", "spurious": 1.0}
    assert (a.name, scratch.name) == ("count_a", "count_a_scratch")
    kinds = [(s.generator, s.source, s.domain) for s in (a, scratch, b)]
    assert kinds == [("pcfg", "toy", "pcfg")] * 3
    assert a.task.labels == scratch.task.labels == b.task.labels  # one label set: the world's answer words
    # The records are a function of the spec, drawn as the data stage draws them (the world aside).
    sizes = {"train": 6, "test": 3}
    drawn = [generate_splits(World.from_config(s.pcfg["world"]), {k: v for k, v in s.pcfg.items() if k != "world"},
                             sizes, 42) for s in (a, scratch, b)]  # fmt: skip
    assert drawn[0] == drawn[1]
    assert [r["prompt"] for r in drawn[0]["train"]] != [r["prompt"] for r in drawn[2]["train"]]
    assert all(r["operand"] == "a" for r in drawn[1]["train"])


# --- the PCFG suite's checkpoints ----------------------------------------------------------------------------------


def test_pcfg_checkpoints_are_the_save_steps_then_scratch():
    def edit(raw):
        raw["checkpoints"]["pcfg"].update(steps=2000, n_checkpoints=5, first_step=400, batch_size=10)

    config = study(edit)
    per_step = 10 * (24 + 9)  # a sample: <sos> T O O' <sot>, 24 text tokens, <eot> <art> answer <eos>
    assert per_step == 10 * World.from_config(config["checkpoints"]["pcfg"]["world"]).sample_length
    entries = checkpoint_entries(config)
    assert [e["name"] for e in entries] == ["step400", "step800", "step1200", "step1600", "step2000", PCFG_BASELINE]
    assert [e["step"] for e in entries] == [400, 800, 1200, 1600, 2000, 2000]
    assert [e["tokens"] for e in entries] == [s * per_step for s in (400, 800, 1200, 1600, 2000, 2000)]
    assert [e["run"] for e in entries] == ["pretrain"] * 5 + ["baseline"]


def test_the_toy_studys_checkpoints_and_pretraining_runs(tmp_path):
    plan = plan_of(tmp_path)
    assert plan.suite == "pcfg" and plan.pretrained_here
    assert plan.checkpoints == ("step1000", "step2000", "scratch")
    assert [e["tokens"] for e in plan.checkpoint_entries] == [1000 * 32 * 33, 2000 * 32 * 33, 2000 * 32 * 33]
    assert plan.pretraining_checkpoints("pretrain") == ("step1000", "step2000")
    assert plan.pretraining_checkpoints("baseline") == ("scratch",)


def test_without_a_baseline_there_is_no_scratch_checkpoint(tmp_path):
    def edit(raw):
        del raw["checkpoints"]["pcfg"]["baseline"]
        del raw["finetune"]["per_task"]["count_a_scratch"]
        raw["train_tasks"].remove("count_a_scratch")
        del raw["relations"]["count_a_scratch"]

    entries = checkpoint_entries(study(edit))
    assert [e["name"] for e in entries] == ["step1000", "step2000"]
    assert PCFG_BASELINE not in plan_of(tmp_path, edit).checkpoints

    # A task that still asks for it names the key.
    def baseline_only(raw):
        del raw["checkpoints"]["pcfg"]["baseline"]

    fails(tmp_path, baseline_only, "finetune.per_task.count_a_scratch.checkpoints", also="scratch")


# --- per-task checkpoints ------------------------------------------------------------------------------------------


def test_per_task_checkpoints_restrict_that_tasks_runs(tmp_path):
    def edit(raw):
        tasks = raw["finetune"]["per_task"]
        tasks["count_a_scratch"]["checkpoints"] = ["scratch", "step1000"]  # in suite order whatever the order here
        del tasks["count_b"]["checkpoints"]  # every checkpoint

    plan = plan_of(tmp_path, edit)
    per_task = {t: [m.checkpoint for m in plan.training_runs if m.train_task == t] for t in plan.train_tasks}
    assert per_task["count_a_scratch"] == ["step1000"] * 3 + ["scratch"] * 3
    assert per_task["count_b"] == ["step1000"] * 3 + ["step2000"] * 3 + ["scratch"] * 3
    assert per_task["count_a"] == ["step2000"] * 3  # its own list; its parents are the count_b runs of step2000
    assert {m.parent.checkpoint for m in plan.training_runs if m.train_task == "count_a"} == {"step2000"}


def test_an_unknown_per_task_checkpoint_names_the_key(tmp_path):
    def edit(raw):
        raw["finetune"]["per_task"]["count_a_scratch"]["checkpoints"] = ["scratch", "step1500"]

    message = fails(tmp_path, edit, "finetune.per_task.count_a_scratch.checkpoints", also="step1500")
    assert "step1000" in message and "scratch" in message  # the suite's names


# --- the mechanistic section ---------------------------------------------------------------------------------------


def test_the_layer_probe_dataset_must_be_a_training_task(tmp_path):
    def edit(raw):
        raw["mechanistic"]["layer_probes"]["dataset"] = "count_c"
        raw["datasets"]["count_c"] = {"source": "pcfg", "task": "count", "operand": "c"}
        raw["relations"]["count_b"]["cross-task"].append("count_c")

    fails(tmp_path, edit, "mechanistic.layer_probes.dataset", also="'count_c' is not in train_tasks")


def test_the_pruning_dataset_must_be_a_training_task(tmp_path):
    def edit(raw):
        raw["mechanistic"]["pruning"]["dataset"] = "toy_nli"

    fails(tmp_path, edit, "mechanistic.pruning.dataset", also="'toy_nli'")


def test_a_pruning_eval_set_must_be_an_eval_set(tmp_path):
    def edit(raw):
        raw["mechanistic"]["pruning"]["eval_sets"] = ["count_a", "count_a_scratch"]

    # count_a_scratch is a training task, but no model is scored on it.
    fails(tmp_path, edit, "mechanistic.pruning", also="'count_a_scratch' is not an eval set")


def test_mechanistic_tasks_must_be_training_tasks(tmp_path):
    def edit(raw):
        raw["mechanistic"]["layer_probes"]["tasks"] = ["count_b", "count_c"]

    fails(tmp_path, edit, "mechanistic.layer_probes.tasks", also="count_c")


def test_reverse_needs_a_run_from_a_run(tmp_path):
    def edit(raw):
        del raw["finetune"]["per_task"]["count_a"]["from"]

    fails(tmp_path, edit, "mechanistic.reverse", also="no run starts from another run")


@pytest.mark.parametrize(("key", "value", "also"), [
    ("tasks", ["count_a", "count_c"], "['count_c'] are not in train_tasks"),
    ("baseline_checkpoint", "stories", "no run starts from checkpoint 'stories'"),
])  # fmt: skip
def test_the_reverse_tasks_and_baseline_checkpoint_must_be_of_the_study(tmp_path, key, value, also):
    def edit(raw):
        raw["mechanistic"]["reverse"][key] = value

    fails(tmp_path, edit, f"mechanistic.reverse.{key}", also=also)
    # Named as the study already has them, they pass.
    plan_of(
        tmp_path,
        lambda raw: raw["mechanistic"]["reverse"].update(
            baseline_checkpoint="scratch", tasks=["count_a", "count_a_scratch"]
        ),
    )


def test_the_reverse_eval_set_must_be_an_eval_set(tmp_path):
    def edit(raw):
        raw["mechanistic"]["reverse"]["eval_set"] = "count_a_scratch"

    fails(tmp_path, edit, "mechanistic.reverse.eval_set")


def test_probed_and_pruned_models(tmp_path):
    plan = plan_of(tmp_path)
    tuned_b = [m for m in plan.finetune_runs if m.train_task == "count_b"]
    assert len(tuned_b) == 3
    # Probed: the base checkpoints (base: true by default), then the runs of the listed tasks.
    assert plan.probed_models == plan.base_models + tuple(tuned_b)
    assert [m.id for m in plan.probed_models[:3]] == ["base/step1000", "base/step2000", "base/scratch"]
    # Pruned: the runs of the listed tasks only.
    assert plan.pruned_models == tuple(tuned_b)
    assert [m.id for m in plan.pruned_models] == [f"ft/step2000/count_b/full/lr0.0003/seed{s}" for s in range(3)]

    def every_task_no_base(raw):
        raw["mechanistic"]["layer_probes"].update(tasks=None, base=False)
        raw["mechanistic"]["pruning"]["tasks"] = ["count_a", "count_a_scratch"]

    plan = plan_of(tmp_path, every_task_no_base)
    assert plan.probed_models == plan.finetune_runs and len(plan.probed_models) == 9
    assert [m.train_task for m in plan.pruned_models] == ["count_a"] * 3 + ["count_a_scratch"] * 3
    path = f"{tmp_path}/toy-mechanistic/mechanistic/base/step1000/layer_probes.parquet"
    assert plan.layer_probes_path("base/step1000") == path

    def without_section(raw):
        del raw["mechanistic"]

    plan = plan_of(tmp_path, without_section)
    assert plan.probed_models == () and plan.pruned_models == ()


def test_pruning_scores_its_eval_sets_in_their_first_format(tmp_path):
    plan = plan_of(tmp_path)
    assert plan.pruning_evaluations() == [
        {"eval_set": "count_a", "relation": "pruning", "formats": ["default"]},
        {"eval_set": "count_b", "relation": "pruning", "formats": ["default"]},
    ]


# --- the toy study's plan ------------------------------------------------------------------------------------------


def test_the_toy_study_plan_scratch_feeds_only_the_baseline_and_reverse_runs_have_parents(tmp_path):
    plan = plan_of(tmp_path)
    runs = plan.training_runs
    assert len(runs) == 9
    scratch = [m for m in runs if m.checkpoint == PCFG_BASELINE]
    assert {m.train_task for m in scratch} == {"count_a_scratch"} and len(scratch) == 3
    assert all(m.parent is None for m in scratch)
    assert {m.checkpoint for m in runs if m.train_task == "count_a_scratch"} == {PCFG_BASELINE}
    reverse = [m for m in runs if m.train_task == "count_a"]
    assert len(reverse) == 3
    for m in reverse:
        assert m.parent is not None and m.parent.train_task == "count_b"
        assert (m.parent.checkpoint, m.parent.seed, m.parent.method, m.parent.lr) == ("step2000", m.seed, "full", 3e-4)
        assert plan.start_path(m) == plan.run_file(m.parent.run, "model")
        assert m.snapshots  # scored every 10 steps: a trajectory
    assert all(m.parent is None and not m.snapshots for m in runs if m.train_task == "count_b")
    assert all(m.snapshots for m in scratch)
    # The runs with a parent are what mechanistic.reverse measures.
    assert [m for m in plan.finetune_runs if m.parent is not None] == reverse
