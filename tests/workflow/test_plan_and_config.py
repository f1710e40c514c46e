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
    # The schema checks types; the plan checks names against the lists the code declares (formats).
    with pytest.raises((WorkflowError, ValueError), match=needle):
        validate(cfg, SCHEMA, set_default=True)
        build_plan(cfg)


@pytest.mark.parametrize(
    "section, value, needle",
    [
        ({"lora": {"rank": 64}}, None, r"finetune\.lora\.rank: unknown key"),
        ({"per_task": {"toy_nli": {"lora": {"rank": 64}}}}, None, r"finetune\.per_task\.toy_nli\.lora\.rank"),
        ({"per_task": {"toy_nli": {"lpft": {"l2": "big"}}}}, None, r"finetune\.per_task\.toy_nli\.lpft\.l2"),
        ({"lorra": {"r": 4}}, None, r"finetune\.lorra: unknown key"),
        ({"methods": ["full", "qlora"]}, None, r"finetune\.methods: .*'qlora'.*allowed: full, lora, lpft, instruct"),
    ],
)
def test_method_settings_are_checked_by_their_method(section, value, needle):
    cfg = load_config()
    for key, block in section.items():
        cfg["finetune"][key] = block
    with pytest.raises(ValueError, match=needle):
        build_plan(cfg)


def test_method_settings_get_the_methods_defaults():
    cfg = load_config()
    cfg["finetune"]["lora"] = {"r": 4}
    cfg["finetune"]["per_task"]["toy_nli"]["lora"] = {"alpha": 8}
    lora = build_plan(cfg).run_config("toy_nli", "lora")["lora"]
    assert lora == {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": "all-linear", "save": "merged"}
    assert "lora" not in build_plan(cfg).run_config("toy_nli", "full")


def test_finetune_checkpoints_limits_training_not_base_scoring():
    cfg = load_config()
    cfg["finetune"]["checkpoints"] = ["step200"]
    plan = build_plan(cfg)
    assert {m.checkpoint for m in plan.finetune_runs} == {"step200"} and len(plan.finetune_runs) == 7
    assert len(plan.base_models) == 4
    assert "checkpoints" not in plan.run_config("toy_nli", "full")  # not a training job's parameter
    cfg["finetune"]["checkpoints"] = ["step999"]
    with pytest.raises(ValueError, match="finetune.checkpoints.*step999"):
        build_plan(cfg)


def test_plan_of_the_default_study():
    plan = build_plan(load_config())
    assert plan.checkpoints == ("step10", "step73", "step137", "step200")
    # per checkpoint: toy_nli by full, lora and lpft; paraphrase, summary, qgen by full; toy_chat by instruct
    assert len(plan.finetune_runs) == 4 * 7
    assert len(plan.models) == 4 + 28
    assert [m.id for m in plan.finetune_runs[:3]] == [
        "ft/step10/toy_nli/full/lr0.001/seed0", "ft/step10/toy_nli/lora/lr0.001/seed0",
        "ft/step10/toy_nli/lpft/lr0.001/seed0",
    ]  # fmt: skip
    assert plan.finetune_runs[6].id == "ft/step10/toy_chat/instruct/lr0.001/seed0"
    # A run is given its own settings only: no grid keys, no other method's settings.
    assert set(plan.run_config("toy_nli", "lora")) >= {"lora", "probes"}
    assert "lpft" not in plan.run_config("toy_nli", "lora") and "lrs" not in plan.run_config("toy_nli", "full")
    assert len(set(m.id for m in plan.models)) == len(plan.models)


def test_relations():
    assert relation("none", "toy_nli") == "pretraining"
    assert relation("toy_nli", "toy_nli") == "in-domain"
    assert relation("toy_nli", "toy_nli_ood") == "ood"
    assert relation("toy_nli", "toy_summary") == "cross-task"


def test_lr_selection_plan():
    cfg = copy.deepcopy(load_config())
    cfg["finetune"]["lrs"] = [0.001, 0.01]
    cfg["finetune"]["select_lr"] = {"metric": "score"}
    plan = build_plan(cfg)
    # 7 evaluated (task, method) pairs and the toy documents, measured by the Dissecting analysis only.
    assert len(plan.training_runs) == 2 * 32 and len(plan.finetune_runs) == 28
    assert len(plan.dissect_models) == 4 + 2 * 4 and not [m for m in plan.finetune_runs if m.train_task == "toy_docs"]
    assert all(m.train_task != "toy_docs" for m in plan.selections())  # every lr of a corpus run is measured
    assert plan.finetune_runs[0].id == "ft/step10/toy_nli/full/selected/seed0" and plan.finetune_runs[0].lr is None
    assert plan.selections()[0].grid_key == ("step10", "toy_nli", "full", 0, None, None)
    assert [m.lr for m in plan.grid_runs(plan.selections()[0])] == [0.001, 0.01]
    # The score is the study's own evaluation settings (the run is given them, nothing is assumed).
    ev = cfg["evaluate"]
    assert plan.run_config("toy_nli", "full")["validation_score"] == {
        "batch_size": ev["batch_size"], "max_new_tokens": ev["max_new_tokens"], "stop": ev["stop"],
        "rouge_stemmer": ev["rouge_stemmer"]}  # fmt: skip
    cfg["finetune"]["select_lr"] = {"evaluate": "all"}
    assert len(build_plan(cfg).finetune_runs) == 2 * 28
    assert relation("toy_chat", "toy_qgen") == "in-domain" and relation("toy_chat", "toy_qgen_ood") == "ood"


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
    # 4 checkpoints x 8 (task, method) fine-tuning jobs, 7 of them evaluated; the derivation and Dissecting stages
    counts = {line.split()[0]: line.split()[1] for line in text.splitlines() if len(line.split()) == 2}
    assert counts["finetune"] == "32" and counts["evaluate_finetuned"] == "28"
    assert counts["derive_variants"] == "1" and counts["dissect_loglik"] == "8" and counts["analysis_dissect"] == "1"


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config.yaml").read_text() + "\nfinetuning: {}\n")
    out = snakemake("-n", "--configfile", str(bad))
    assert out.returncode != 0
    assert "finetuning" in out.stderr + out.stdout


def test_snakemake_alone_uses_the_default_profile_and_study():
    out = snakemake("-n", "--forceall")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "Using workflow specific profile profiles/default" in text
    assert "results/toy/" in text  # the default study, config.yaml


def test_a_section_gets_its_defaults_from_the_schema():
    from ptft.config import complete

    checks = complete("derive.checks", {"max_attempts": 2})
    assert checks == {"max_attempts": 2, "min_length_ratio": 0.3, "max_copy_similarity": 0.95,
                      "min_distinct_ngrams": 0.3}  # fmt: skip
    assert complete("derive.backend", {"name": "hf", "model": "m"})["batch_size"] == 8
    with pytest.raises(ValueError, match="derive.checks: Additional properties.*max_attemps"):
        complete("derive.checks", {"max_attemps": 2})


def test_gpus_are_the_jobs_not_the_runs(tmp_path):
    """finetune.gpus shards a task's runs (ptft.finetune.sharded), evaluate.gpus splits the evaluated models;
    both are passed beside the settings (a study that changes them re-runs nothing), and a sharded run
    cannot score its validation split (generation)."""
    cfg = copy.deepcopy(load_config())
    cfg["finetune"]["per_task"].setdefault("toy_nli", {})["gpus"] = 2
    validate(cfg, SCHEMA, set_default=True)
    plan = build_plan(cfg)
    assert plan.gpus("toy_nli", "full") == 2 and plan.gpus("toy_summary", "full") == 1
    assert "gpus" not in plan.run_config("toy_nli", "full")
    assert plan.run_config("toy_nli", "full") == build_plan(load_config()).run_config("toy_nli", "full")
    cfg["finetune"]["select_lr"] = {"metric": "score"}
    with pytest.raises(ValueError, match=r"finetune\.gpus \(task 'toy_nli', methods \['full'"):
        build_plan(cfg)
    bad = copy.deepcopy(load_config())
    bad["finetune"]["gpus"] = 0
    with pytest.raises(WorkflowError, match="gpus"):
        validate(bad, SCHEMA, set_default=True)

    study = tmp_path / "study.yaml"
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["finetune"].setdefault("per_task", {}).setdefault("toy_nli", {})["gpus"] = 2
    raw.setdefault("evaluate", {})["gpus"] = 3
    study.write_text(yaml.safe_dump(raw))
    out = snakemake("-n", "-p", "--configfile", str(study), "--directory", str(tmp_path), "--forceall")
    assert out.returncode == 0, out.stderr[-3000:]
    commands = [line for line in out.stdout.splitlines() if "ptft finetune" in line]
    sharded = [c for c in commands if "--task toy_nli " in c]
    assert sharded and all("--gpus 2 " in c for c in sharded)
    assert all("--gpus 1 " in c for c in commands if c not in sharded)
    evaluations = [line for line in out.stdout.splitlines() if "ptft evaluate" in line]
    assert evaluations and all("--gpus 3 " in c and '"gpus"' not in c for c in evaluations)
