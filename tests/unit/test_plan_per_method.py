"""Per-method settings of a task (``finetune.per_task.<task>.per_method``): DPO with its own lr and
epochs, from the same task's SFT runs; the probe sets a study builds; settings added later leave the
run configs of existing studies as they were."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import ROOT
from ptft.config import validate_study
from ptft.plan import build_plan


def ld_config():
    cfg = yaml.safe_load((ROOT / "workflow/studies/toy-learning-dynamics.yaml").read_text())
    validate_study(cfg)
    return cfg


def test_dpo_starts_from_each_sft_run_of_its_own_task_with_its_own_settings():
    plan = build_plan(ld_config())
    runs = plan.training_runs
    assert len(runs) == 2 * 2 * 4  # fine-tuned checkpoints × seeds × (full, extend, dpo ← full, dpo ← extend)
    dpo = [m for m in runs if m.method == "dpo"]
    assert {(m.parent.method, m.parent.lr) for m in dpo} == {("full", 3e-4), ("extend", 3e-4)}
    assert {m.lr for m in dpo} == {3e-5}
    child = next(m for m in dpo if m.checkpoint == "step200" and m.seed == 1 and m.parent.method == "extend")
    assert child.run == "step200/toy_pref/extend/lr0.0003/seed1/then/toy_pref/dpo/lr3e-05/seed1"
    assert child.parent.seed == 1 and child.parent.checkpoint == "step200"
    # Every parent is planned before its children (the workflow reads parents' models).
    order = {m.run: i for i, m in enumerate(runs)}
    assert all(order[m.parent.run] < order[m.run] for m in dpo)
    dpo_cfg, sft_cfg = plan.run_config("toy_pref", "dpo"), plan.run_config("toy_pref", "full")
    assert (dpo_cfg["epochs"], sft_cfg["epochs"]) == (4, 2)
    assert dpo_cfg["dpo"] == {"beta": 0.02, "reference": "cached", "batch_size": 16} and "dpo" not in sft_cfg
    assert "per_method" not in dpo_cfg and "from" not in dpo_cfg
    # The probe set is built once and read by every run; its path replaces its name in the run's config.
    assert dpo_cfg["probes"]["path"] == plan.probe_set_path("toy") == sft_cfg["probes"]["path"]
    assert plan.probe_set_input("toy_pref") == plan.probe_set_path("toy")
    assert dpo_cfg["probes"]["eos"] is True and dpo_cfg["probes"]["argmax_of"] == "chosen"


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda f: f["per_method"].update(lora={"epochs": 1}), "per_method.lora: 'lora' is not a method of task"),
        (lambda f: f["per_method"]["dpo"].update(seeds=[0]), "per_method.dpo.seeds: set per task, not per method"),
        (lambda f: f["per_method"]["dpo"].update({"from": {"method": "dpo"}}),
         "per_method.dpo.from: a run cannot start from runs of its own task and method"),
        (lambda f: f["per_method"].update(full={"from": {"method": "dpo"}}),
         "cycle: toy_pref (full) -> toy_pref (dpo)"),
        (lambda f: f["per_method"]["dpo"].update({"from": {"method": "full", "lr": 0.1}}),
         "lr 0.1 is not an lr of 'toy_pref'"),
    ],
)  # fmt: skip
def test_bad_per_method_settings_name_the_key(edit, needle):
    cfg = ld_config()
    edit(cfg["finetune"]["per_task"]["toy_pref"])
    with pytest.raises(ValueError, match="finetune.per_task") as err:
        build_plan(cfg)
    assert needle in str(err.value)


def test_a_probe_set_is_checked_when_the_plan_is_built():
    cfg = ld_config()
    cfg["finetune"]["probes"]["set"] = "other"
    with pytest.raises(ValueError, match=r"finetune.probes.set \(task 'toy_pref'\): no probe set 'other'"):
        build_plan(cfg)
    cfg = ld_config()
    cfg["probe_sets"]["toy"]["task"] = "toy_nli"
    with pytest.raises(ValueError, match="probe_sets.toy.task: 'toy_nli' is not in train_tasks"):
        build_plan(cfg)
    cfg = ld_config()
    cfg["probe_sets"]["toy"]["types"] = ["chosen", "argmax"]
    with pytest.raises(ValueError, match="probe_sets.toy.types"):
        build_plan(cfg)


def test_settings_added_later_leave_an_existing_run_config_as_it_was():
    """optimizer, schedule, warmup_steps, max_prompt_length and the new probe keys at their defaults are
    left out of a run's config: upgrading re-runs no job of an existing study (its params are equal)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate_study(cfg)
    run_cfg = build_plan(copy.deepcopy(cfg)).run_config("toy_nli", "full")
    for key in (
        "optimizer",
        "schedule",
        "warmup_steps",
        "max_prompt_length",
        "per_method",
        "classifier_head",
        "classifier_dropout",
    ):
        assert key not in run_cfg
    assert set(run_cfg["probes"]) == {"every", "examples", "path"}
    # lpft's folds and cs (for a classifier head) at their defaults: its label-word runs keep their config
    assert build_plan(copy.deepcopy(cfg)).run_config("toy_nli", "lpft")["lpft"] == {"l2": 0.001, "max_iter": 100,
                                                                                  "batch_size": 16}  # fmt: skip
    cfg["finetune"]["lpft"] = {"folds": 3}
    assert build_plan(copy.deepcopy(cfg)).run_config("toy_nli", "lpft")["lpft"]["folds"] == 3
    cfg["finetune"]["optimizer"] = "rmsprop"
    assert build_plan(cfg).run_config("toy_nli", "full")["optimizer"] == "rmsprop"
