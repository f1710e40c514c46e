import copy
import subprocess
import sys

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import ROOT
from ptft.plan import build_plan, relation

SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")


def load_config():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(cfg, SCHEMA, set_default=True)
    return cfg


def test_defaults_are_filled_from_the_schema():
    cfg = load_config()
    assert cfg["finetune"]["warmup_ratio"] == 0.03
    assert cfg["evaluate"]["max_new_tokens"]["classification"] == 5
    assert cfg["aggregate"]["bootstrap"]["resamples"] == 3000


@pytest.mark.parametrize(
    "path, value, needle",
    [
        (("finetune", "lrz"), [1e-3], "lrz"),
        (("finetune", "epochs"), "three", "epochs"),
        (("evaluate", "formats"), ["default", "chat"], "chat"),
        (("checkpoints", "toy", "steps"), 1, "steps"),
    ],
)
def test_bad_config_names_the_key(path, value, needle):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(WorkflowError, match=needle):
        validate(cfg, SCHEMA, set_default=True)


def test_plan_of_the_default_study():
    plan = build_plan(load_config())
    assert len(plan.checkpoints) == 6
    assert plan.checkpoints == ("step10", "step48", "step86", "step124", "step162", "step200")
    assert len(plan.finetune_runs) == 6 * 4
    assert len(plan.models) == 6 + 24
    assert plan.finetune_runs[0].id == "ft/step10/toy_nli/full/lr0.001/seed0"
    assert len(set(m.id for m in plan.models)) == len(plan.models)


def test_relations():
    assert relation("none", "toy_nli") == "pretraining"
    assert relation("toy_nli", "toy_nli") == "in-domain"
    assert relation("toy_nli", "toy_nli_ood") == "ood"
    assert relation("toy_nli", "toy_summary") == "cross-task"


def test_unknown_dataset_is_named():
    cfg = copy.deepcopy(load_config())
    cfg["eval_sets"].append("toy_nope")
    with pytest.raises(KeyError, match="toy_nope"):
        build_plan(cfg)


def snakemake(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_dry_run_of_the_default_config():
    out = snakemake("-n", "--configfile", "config.yaml", "--directory", str(ROOT), "--forceall")
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout + out.stderr
    assert "finetune" in text and "evaluate_base" in text and "performance_table" in text
    # 6 checkpoints x 4 tasks fine-tuning jobs
    assert any(line.split()[:2] == ["finetune", "24"] for line in text.splitlines())


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config.yaml").read_text() + "\nfinetuning: {}\n")
    out = snakemake("-n", "--configfile", str(bad))
    assert out.returncode != 0
    assert "finetuning" in out.stderr + out.stdout
