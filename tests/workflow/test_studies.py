"""The ready-made real studies: their plans match the papers' matrices; their DAGs build offline."""

import copy

import pytest

from conftest import ROOT, dry_run
from ptft.analysis.registry import get_analysis
from ptft.config import load_study
from ptft.plan import build_plan

AMURO = ROOT / "workflow/studies/amuro-char-olmo1b.yaml"
PYTHIA = ROOT / "workflow/studies/pythia-160m.yaml"

# docs/studies.md §1, "Evaluation pairs (eval set <- training task)"
PAPER_PAIRS = {
    ("mnli", "mnli_matched", "in-domain"), ("mnli", "mnli_mismatched", "in-domain"), ("paws", "paws", "in-domain"),
    ("xsum", "xsum", "in-domain"), ("socialiqa", "socialiqa", "in-domain"), ("tulu", "boolq", "in-domain"),
    ("tulu", "sciq_mc", "pretraining"), ("tulu", "hellaswag", "pretraining"), ("tulu", "arc_challenge", "pretraining"),
    ("tulu", "arc_easy", "pretraining"), ("tulu", "openbookqa", "pretraining"),
    ("mnli", "rte", "ood"), ("mnli", "gpt3nli", "ood"), ("xsum", "xlsum", "ood"), ("xsum", "cnn", "ood"),
    ("paws", "qqp", "ood"), ("paws", "stsb", "ood"), ("socialiqa", "tweetqa", "ood"), ("socialiqa", "sciq", "ood"),
    ("mnli", "xsum", "cross-task"), ("mnli", "socialiqa", "cross-task"), ("paws", "xsum", "cross-task"),
    ("paws", "socialiqa", "cross-task"), ("xsum", "paws", "cross-task"), ("xsum", "mnli_matched", "cross-task"),
    ("socialiqa", "mnli_matched", "cross-task"), ("socialiqa", "paws", "cross-task"),
}  # fmt: skip
# 8 checkpoints x 5 training runs; 21 registry datasets (19 eval sets + mnli + tulu)
AMURO_JOBS = {
    "download_dataset": 21,
    "download_checkpoint": 8,
    "checkpoint_manifest": 1,
    "prepare_train": 5,
    "prepare_eval": 19,
    "finetune": 40,
    "evaluate_base": 8,
    "evaluate_finetuned": 40,
    "performance_table": 1,
    "analysis_performance": 1,
    "analysis_seeds": 1,
    "analysis_change": 1,
    "analysis_transfer": 1,
    "analysis_formats": 1,
    "report_table_performance": 1,
    "report_table_seeds": 1,
    "report_table_change": 3,
    "report_table_transfer": 1,
    "report_table_formats": 2,
    "all": 1,
}


def test_amuro_char_plan_is_the_papers_matrix(tmp_path):
    plan = build_plan(load_study(AMURO), tmp_path)
    assert plan.checkpoints == ("step1000", "step18000", "step342000", "step424000", "step505000", "step592000",
                                "step738000", "final")  # fmt: skip
    assert [e["step"] for e in plan.checkpoint_entries][-1] == 750000
    assert {(r["train_task"], r["eval_set"], r["relation"]) for r in plan.relation_rows()} == PAPER_PAIRS
    runs = {(m.train_task, m.method, m.lr) for m in plan.finetune_runs}
    assert runs == {("mnli", "full", 2e-6), ("paws", "full", 2e-6), ("socialiqa", "full", 2e-6),
                    ("xsum", "full", 2e-7), ("tulu", "instruct", 2e-6)}  # fmt: skip
    assert len(plan.finetune_runs) == 40 and len(plan.models) == 48
    ft = plan.finetune_configs
    assert ft["mnli"]["epochs"] == 3 and ft["tulu"]["epochs"] == 5
    # the paper's effective batch of 8, in one packed micro-batch (the split does not change the update)
    assert (ft["mnli"]["batch_size"], ft["mnli"]["grad_accum"], ft["mnli"]["warmup_ratio"]) == (8, 1, 0.03)
    assert plan.data_configs["tulu"]["train_fraction"] == 0.05 and plan.data_configs["mnli"]["train_size"] == 6000
    formats = {e.eval_set: e.formats for e in plan.base_models[0].evaluations}
    assert formats["mnli_matched"] == ("default", "instruct", "io") and formats["rte"] == ("default",)
    assert formats["arc_easy"] == ("default",)
    assert all(m.shots == 4 for m in plan.models)
    # The release's k shots were the same for every item (docs/studies.md): one set per eval set and format.
    assert load_study(AMURO)["evaluate"]["fewshot"] == "fixed"


def test_amuro_char_dry_run_offline(tmp_path):
    counts, seconds = dry_run(AMURO, tmp_path)
    assert counts == AMURO_JOBS
    assert seconds < 20
    download, _ = dry_run(AMURO, tmp_path, "download")
    assert download == {"download_dataset": 21, "download_checkpoint": 8, "download": 1}


def test_pythia_dry_run(tmp_path):
    counts, _ = dry_run(PYTHIA, tmp_path)
    assert counts["finetune"] == 20 and counts["evaluate_base"] == 5 and counts["prepare_eval"] == 13


@pytest.fixture
def amuro():
    return load_study(AMURO)


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda c: c["relations"]["mnli"]["ood"].append("nope"), "unknown dataset 'nope'"),
        (lambda c: c["relations"].update(boolq={"in-domain": ["boolq"]}), r"relations: \['boolq'\] are not in"),
        (lambda c: c["relations"]["paws"].update({"ood": ["paws"]}), "listed under two relations"),
        (lambda c: c["relations"]["tulu"].update({"in-domain": ["tulu"]}), "chat .* not an eval set"),
        (lambda c: c["finetune"]["per_task"].pop("tulu"), "task 'tulu' needs method instruct"),
        (lambda c: c["finetune"]["per_task"].update(rte={"lrs": [1.0]}), r"finetune.per_task: \['rte'\]"),
        (lambda c: c["train_tasks"].append("rte"), "dataset 'rte' has no training split"),
    ],
)
def test_bad_study_is_named(amuro, tmp_path, edit, error):
    cfg = copy.deepcopy(amuro)
    edit(cfg)
    with pytest.raises((ValueError, KeyError), match=error):
        build_plan(cfg, tmp_path)


def with_pubmed_dissecting(cfg: dict) -> None:
    """docs/derivation.md's Dissecting sections: PubMed documents rewritten by an LLM server, then measured."""
    cfg["derive"] = {"corpus": {"dataset": "pubmed", "split": "test"},
                     "backend": {"name": "openai", "base_url": "http://gpu-node:8000/v1", "model": "llama",
                                 "api_key_env": "VLLM_API_KEY"}}  # fmt: skip
    cfg["dissect"] = {"train_task": "pubmed"}


def test_a_real_study_with_the_dissecting_stage_dry_runs_offline(tmp_path):
    """docs/derivation.md's example: pythia-160m plus a PubMed corpus, an openai backend and dissect."""
    import yaml

    cfg = load_study(PYTHIA)
    cfg["train_tasks"].append("pubmed")
    cfg["finetune"]["per_task"]["pubmed"] = {"methods": ["full", "lora"], "lrs": [3e-6]}
    with_pubmed_dissecting(cfg)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(cfg))
    counts, _ = dry_run(study, tmp_path)
    # 5 checkpoints x (4 tasks + pubmed full and lora); pubmed's models are measured, not scored.
    assert counts["finetune"] == 30 and counts["evaluate_finetuned"] == 20
    assert counts["dissect_loglik"] == 5 + 10 and counts["derive_variants"] == counts["derive_corpus"] == 1
    assert counts["download_dataset"] == 15  # pythia-160m's 14 datasets (13 eval sets and mnli), and pubmed
    plan = build_plan(cfg, tmp_path)
    assert plan.relation_rows() and not [m for m in plan.finetune_runs if m.train_task == "pubmed"]
    with pytest.raises(ValueError, match=r"dissect.train_task: 'mnli' is not a plain-document corpus"):
        build_plan({**cfg, "dissect": {"train_task": "mnli"}}, tmp_path)


def test_the_dissecting_size_sweep_to_a_million_documents_dry_runs_offline(tmp_path):
    """docs/derivation.md's size sweep: PubMed subsamples of 1k to 1M documents, each run's trajectory measured."""
    import yaml

    cfg = load_study(PYTHIA)
    cfg["train_tasks"] = ["pubmed"]
    cfg.pop("relations", None)
    cfg["eval_sets"] = ["xsum"]
    cfg["data"]["per_task"] = {"pubmed": {"train_sizes": [1000, 10000, 100000, 1000000]}}
    cfg["finetune"]["per_task"] = {"pubmed": {"lrs": [3e-6], "snapshots": {"steps": [100, 1000]}}}
    with_pubmed_dissecting(cfg)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(cfg))
    counts, _ = dry_run(study, tmp_path)
    # 5 checkpoints x 4 sizes: one subsample per size, nested; every run and each of its snapshots measured.
    assert counts["prepare_train_size"] == 4 and counts["finetune_snapshots"] == 20
    assert counts["dissect_loglik"] == 5 + 20 and counts["dissect_trajectory"] == 20
    sizes = {m.train_size for m in build_plan(cfg, tmp_path).training_runs}
    assert sizes == {1000, 10000, 100000, 1000000}


LEARNING_DYNAMICS = ROOT / "workflow/studies/learning-dynamics-pythia410m.yaml"
LEARNING_DYNAMICS_SUITE = ROOT / "workflow/studies/learning-dynamics-pythia410m-suite.yaml"
# One checkpoint x (SFT, extend, DPO <- SFT, DPO <- extend), one probe set; nothing scored.
LEARNING_DYNAMICS_JOBS = {
    "download_checkpoint": 1,
    "download_dataset": 1,
    "checkpoint_manifest": 1,
    "prepare_train": 1,
    "prepare_eval": 1,  # the test prompts of irrelevant_test
    "build_probe_set": 1,
    "finetune": 4,
    "analysis_dynamics": 1,
    "report_table_dynamics": 1,
    "all": 1,
}


def test_the_learning_dynamics_study_has_the_papers_settings(tmp_path):
    plan = build_plan(load_study(LEARNING_DYNAMICS), tmp_path)
    assert plan.checkpoints == ("final",) and plan.checkpoint_entries[0]["model"] == "EleutherAI/pythia-410m-deduped"
    sft, dpo = plan.run_config("hh_helpful", "full"), plan.run_config("hh_helpful", "dpo")
    for cfg in (sft, dpo):
        assert (cfg["batch_size"], cfg["max_length"], cfg["max_prompt_length"]) == (4, 512, 256)
        schedule = (cfg["optimizer"], cfg["schedule"], cfg["warmup_steps"], cfg["max_grad_norm"])
        assert schedule == ("rmsprop", "constant", 150, 10.0)
        assert cfg["probes"]["every"] == 25 and cfg["probes"]["eos"] and cfg["probes"]["argmax_of"] == "chosen"
    assert (sft["epochs"], dpo["epochs"], dpo["dpo"]["beta"]) == (8, 6, 0.1)
    runs = plan.training_runs
    assert {m.lr for m in runs} == {5e-7}
    assert sorted((m.method, m.parent and m.parent.method) for m in runs) == [
        ("dpo", "extend"), ("dpo", "full"), ("extend", None), ("full", None)]  # fmt: skip
    assert plan.probe_sets["hh"]["examples"] == 500 and plan.data_configs["hh_helpful"]["train_size"] == 5000
    assert not plan.finetune_runs  # nothing is scored: the runs are measured by their probes


def test_the_learning_dynamics_studies_dry_run_offline(tmp_path):
    counts, _ = dry_run(LEARNING_DYNAMICS, tmp_path)
    assert counts == LEARNING_DYNAMICS_JOBS
    counts, _ = dry_run(LEARNING_DYNAMICS_SUITE, tmp_path)
    # Six Pythia checkpoints, each with the four runs.
    assert counts == {**LEARNING_DYNAMICS_JOBS, "download_checkpoint": 6, "finetune": 24}


LPFT = ROOT / "workflow/studies/lpft-roberta-base.yaml"
LPFT_SUITE = ROOT / "workflow/studies/lpft-pythia-suite.yaml"
# Per classifier run: its fine-tune, its evaluation by its head and its measures (calibration, features).
LPFT_JOBS = {
    "download_checkpoint": 1,
    "download_dataset": 13,
    "checkpoint_manifest": 1,
    "prepare_eval": 13,
    "prepare_train": 10,
    "prepare_validation": 10,  # the last 10 % of each training split: the best epoch, the temperature
    "finetune": 250,  # 10 training sets x 5 methods x 5 seeds
    "evaluate_finetuned": 250,
    "measure_classifier": 250,
    "performance_table": 1,
    "analysis_formats": 1,
    "analysis_lpft": 1,
    "analysis_performance": 1,
    "analysis_seeds": 1,
    "report_table_performance": 1,
    "report_table_formats": 2,
    "report_table_lpft": 4,
    "report_table_seeds": 1,
    "all": 1,
}


def test_the_lpft_study_has_the_papers_settings(tmp_path):
    plan = build_plan(load_study(LPFT), tmp_path)
    assert plan.checkpoints == ("final",) and plan.checkpoint_entries[0]["model"] == "FacebookAI/roberta-base"
    assert not plan.base_scored and len(plan.classifier_runs) == 250
    amazon = next(m for m in plan.finetune_runs if m.train_task == "amazon")
    assert dict((e.eval_set, e.relation) for e in amazon.evaluations) == {
        "amazon": "in-domain", "dynasent": "ood", "semeval": "ood", "sst5": "ood"}  # fmt: skip
    cfg = plan.run_config("cb", "lpft")
    assert (cfg["batch_size"], cfg["epochs"], cfg["max_length"]) == (8, 10, 128)
    assert "classifier_head" not in cfg and "classifier_dropout" not in cfg  # the defaults: linear head, dropout 0.1
    assert cfg["snapshots"]["select"] == "best_validation" and cfg["snapshots"]["trajectory"] is False
    assert plan.run_config("cb", "lora")["lora"]["target_modules"] == ["query", "value"]


def test_the_lpft_studies_dry_run_offline(tmp_path):
    counts, _ = dry_run(LPFT, tmp_path / "roberta")
    assert counts == LPFT_JOBS
    counts, _ = dry_run(LPFT_SUITE, tmp_path / "suite")
    # 7 Pythia checkpoints x CB, RTE, BoolQ, SST-2 x lp, full, lpft x 3 seeds.
    runs = 7 * 4 * 3 * 3
    assert counts == {**LPFT_JOBS, "download_checkpoint": 7, "download_dataset": 4, "prepare_eval": 4,
                      "prepare_train": 4, "prepare_validation": 4, "finetune": runs, "evaluate_finetuned": runs,
                      "measure_classifier": runs}  # fmt: skip


def test_a_new_classification_dataset_is_one_study_file_entry(tmp_path):
    """A classification dataset added to a study file as one entry of its datasets block (no code) is trained on,
    scored by its head and measured: its own jobs appear in the dry run."""
    import yaml

    cfg = yaml.safe_load((ROOT / "workflow/studies/toy-lpft.yaml").read_text())
    cfg["datasets"]["toy_para_cls"] = {"labels": ["no", "yes"], "template": "{sentence1} {sentence2}",
                                       "source": "toy", "generator": "paraphrase", "domain": "home",
                                       "eval_split": "test", "fewshot_split": "validation"}  # fmt: skip
    cfg["train_tasks"].append("toy_para_cls")
    cfg["relations"]["toy_para_cls"] = {"in-domain": ["toy_para_cls"]}
    study = tmp_path / "toy-lpft.yaml"
    study.write_text(yaml.safe_dump(cfg))
    before, _ = dry_run(ROOT / "workflow/studies/toy-lpft.yaml", tmp_path / "before")
    after, _ = dry_run(study, tmp_path / "after")
    runs = 5 * 5  # the study's methods x seeds, on its one fine-tuned checkpoint
    for rule in ("finetune", "evaluate_finetuned", "measure_classifier"):
        assert after[rule] == before[rule] + runs, rule
    for rule in ("toy_dataset", "prepare_train", "prepare_validation", "prepare_eval"):
        assert after[rule] == before[rule] + 1, rule


MECHANISTIC_TOY = ROOT / "workflow/studies/toy-mechanistic.yaml"
MECHANISTIC_PCFG = ROOT / "workflow/studies/mechanistic-pcfg.yaml"
# Jobs every mechanistic study has whatever its size: the suite's two pre-training runs and their manifest,
# the tables and their report pages.
MECHANISTIC_JOBS = {
    "pretrain_pcfg": 1,
    "pretrain_pcfg_baseline": 1,
    "pcfg_manifest": 1,
    "performance_table": 1,
    "trajectory_table": 1,
    "analysis_change": 1,
    "analysis_formats": 1,
    "analysis_mechanistic": 1,
    "analysis_performance": 1,
    "analysis_seeds": 1,
    "analysis_trajectory": 1,
    "analysis_transfer": 1,
    "report_table_performance": 1,
    "report_table_trajectory": 2,
    "report_table_change": 3,
    "report_table_formats": 2,
    "report_table_mechanistic": 3,
    "report_table_seeds": 1,
    "report_table_transfer": 1,
    "all": 1,
}


def test_the_mechanistic_studies_dry_run_offline(tmp_path):
    counts, _ = dry_run(MECHANISTIC_TOY, tmp_path / "toy")
    # 3 seeds: count_b from step2000, count_a (reverse) from each count_b run, count_a_scratch from scratch;
    # the base checkpoints (step1000, step2000, scratch) and the count_b runs are probed, the count_b runs pruned.
    assert counts == {**MECHANISTIC_JOBS, "toy_dataset": 3, "prepare_train": 3, "prepare_eval": 2,
                      "evaluate_base": 3, "finetune": 3, "finetune_snapshots": 6, "evaluate_finetuned": 9,
                      "evaluate_trajectory": 6, "probe_layers_base": 3, "probe_layers_finetuned": 3,
                      "prune_neurons": 3}  # fmt: skip
    counts, _ = dry_run(MECHANISTIC_PCFG, tmp_path / "pcfg")
    # 3 lrs x 3 seeds of count_b and of count_b_spurious; a reverse run from each spurious run, 3 scratch runs.
    assert counts == {**MECHANISTIC_JOBS, "toy_dataset": 4, "prepare_train": 4, "prepare_eval": 3,
                      "evaluate_base": 6, "finetune": 18, "finetune_snapshots": 12, "evaluate_finetuned": 30,
                      "evaluate_trajectory": 12, "probe_layers_base": 6, "probe_layers_finetuned": 18,
                      "prune_neurons": 18}  # fmt: skip


def test_the_paper_scale_mechanistic_study_has_the_papers_settings(tmp_path):
    plan = build_plan(load_study(MECHANISTIC_PCFG), tmp_path)
    pcfg = load_study(MECHANISTIC_PCFG)["checkpoints"]["pcfg"]
    assert pcfg["model"] == {"layers": 6, "heads": 6, "hidden_size": 192}
    assert (pcfg["world"]["window"], pcfg["world"]["count_window"], pcfg["lr"], pcfg["warmup_ratio"]) == (
        250, 40, 0.001, 0.2)  # fmt: skip
    assert plan.checkpoints[-1] == "scratch"
    cfg = plan.run_config("count_b", "full")
    assert (cfg["batch_size"], cfg["max_steps"], cfg["schedule"], cfg["warmup_ratio"], cfg["min_lr_ratio"]) == (
        96, 10000, "cosine", 0.2, 0.01)  # fmt: skip
    assert sorted({m.lr for m in plan.training_runs if m.train_task == "count_b"}) == [1e-6, 1e-5, 1e-4]
    reverse = [m for m in plan.training_runs if m.train_task == "count_a"]
    assert len(reverse) == 9 and {m.parent.train_task for m in reverse} == {"count_b_spurious"}
    assert {m.checkpoint for m in plan.training_runs if m.train_task == "count_a_scratch"} == {"scratch"}


MECHANISTIC_TINYSTORIES = ROOT / "workflow/studies/mechanistic-tinystories.yaml"


def _story_model_folders(directory):
    """The study's two checkpoint folders, as `huggingface-cli download` leaves them: small random GPT-Neo models
    (TinyStories-33M's architecture) with a byte-level BPE tokenizer."""
    from helpers.tiny_classifiers import write_base

    for name in ("TinyStories-Instruct-33M", "TinyStories-33M"):
        write_base("gpt_neo", directory / "models" / name)


def test_the_tinystories_mechanistic_study_dry_runs_offline(tmp_path):
    _story_model_folders(tmp_path)
    counts, _ = dry_run(MECHANISTIC_TINYSTORIES, tmp_path)
    # ts_no_twist and ts_relabel: 3 lrs x 3 seeds from instruct (18 runs, each pruned); a reverse run (ts_twist,
    # scored along its trajectory) from each; the baseline ts_format_base (3 seeds) then ts_twist_base from each.
    assert counts == {"download_checkpoint": 2, "download_dataset": 5, "checkpoint_manifest": 1, "prepare_train": 5,
                      "prepare_eval": 2, "evaluate_base": 2, "finetune": 21, "finetune_snapshots": 21,
                      "evaluate_finetuned": 42, "evaluate_trajectory": 21, "prune_neurons": 18,
                      "performance_table": 1, "trajectory_table": 1, "analysis_change": 1, "analysis_formats": 1,
                      "analysis_mechanistic": 1, "analysis_performance": 1, "analysis_seeds": 1,
                      "analysis_trajectory": 1, "analysis_transfer": 1, "report_table_performance": 1,
                      "report_table_trajectory": 2, "report_table_change": 3, "report_table_formats": 2,
                      "report_table_mechanistic": 2, "report_table_seeds": 1, "report_table_transfer": 1,
                      "all": 1}  # fmt: skip
    plan = build_plan(load_study(MECHANISTIC_TINYSTORIES), tmp_path / "plan")
    reverse = [m for m in plan.training_runs if m.train_task == "ts_twist"]
    assert len(reverse) == 18 and {m.parent.train_task for m in reverse} == {"ts_no_twist", "ts_relabel"}
    baseline = [m for m in plan.training_runs if m.train_task == "ts_twist_base"]
    assert {(m.checkpoint, m.parent.train_task) for m in baseline} == {("stories", "ts_format_base")}
    assert sorted({m.lr for m in plan.training_runs if m.train_task == "ts_relabel"}) == [1e-6, 1e-5, 1e-4]
    # The reverse table's baseline is the study's named checkpoint, not the PCFG suite's scratch.
    assert get_analysis("mechanistic").spec(plan)["baseline_checkpoint"] == "stories"
