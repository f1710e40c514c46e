"""End-to-end: the whole workflow on a micro study, then the contract of its tables."""

import shutil
import time

import pandas as pd
import pytest

from conftest import ROOT, run_snakemake
from ptft.aggregate.performance import PERFORMANCE_COLUMNS, validate_performance
from ptft.io import read_json

pytestmark = pytest.mark.slow


def snakemake(workdir, *args):
    return run_snakemake(workdir, ROOT / "tests/configs/micro.yaml", *args, timeout=900)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("micro")
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    out = snakemake(workdir)
    assert out.returncode == 0, out.stderr[-5000:]
    return workdir


def test_performance_table_contract(micro_run):
    perf = pd.read_parquet(micro_run / "results/micro/tables/performance.parquet")
    validate_performance(perf)
    assert tuple(perf.columns) == tuple(PERFORMANCE_COLUMNS)
    # (2 base + 1 fine-tuned checkpoint x 4 (task, method)) models x 4 eval sets x 2 formats, one metric each
    assert len(perf) == 6 * 4 * 2
    assert set(perf["method"]) == {"base", "full", "lora", "lpft"}
    assert (perf["n"] == 12).all()
    assert perf["value"].between(0, 1).all()
    assert ((perf["ci_low"] <= perf["value"] + 1e-12) & (perf["value"] <= perf["ci_high"] + 1e-12)).all()
    base = perf[perf["method"] == "base"]
    ft = perf[perf["method"] == "full"]
    assert set(base["relation"]) == {"pretraining"} and (base["shots"] == 2).all() and base["lr"].isna().all()
    assert base["lr_selected"].isna().all()
    tuned = perf[perf["method"] != "base"]
    assert (tuned["shots"] == 0).all() and (tuned["seed"] == 0).all() and tuned["lr_selected"].all()
    # Paired intervals of the change over the same checkpoint's base row contain that change.
    keys = ["checkpoint", "eval_set", "format", "metric"]
    pairs = tuned.merge(base[[*keys, "value"]], on=keys, suffixes=("", "_base"), validate="many_to_one")
    assert len(pairs) == len(tuned) and base["diff_ci_low"].isna().all()
    change = pairs["value"] - pairs["value_base"]
    assert ((pairs["diff_ci_low"] <= change + 1e-12) & (change <= pairs["diff_ci_high"] + 1e-12)).all()
    assert set(tuned["lr"]) <= {0.001, 0.01} and (tuned.loc[tuned["train_task"] == "toy_nli", "lr"] == 0.001).all()
    nli_ft = ft[ft["train_task"] == "toy_nli"].set_index("eval_set")["relation"].to_dict()
    assert nli_ft == {
        "toy_nli": "in-domain",
        "toy_paraphrase_ood": "cross-task",
        "toy_summary": "cross-task",
        "toy_qgen": "cross-task",
    }
    assert set(perf.loc[perf["eval_set"] == "toy_summary", "metric"]) == {"rougeL"}
    assert set(perf.loc[perf["eval_set"] == "toy_nli", "metric"]) == {"accuracy"}
    manifest = read_json(micro_run / "results/micro/checkpoints/manifest.json")
    steps = {c["name"]: c["step"] for c in manifest["checkpoints"]}
    assert steps == {"step4": 4, "step12": 12}
    assert dict(zip(perf["checkpoint"], perf["step"], strict=True)) == steps
    assert set(perf.loc[perf["method"] != "base", "checkpoint"]) == {"step12"}  # finetune.checkpoints
    assert (perf["tokens"] == perf["step"] * 8 * 64).all()


def test_mrc_table_is_written(micro_run):
    from ptft.analysis.transfer import MRC_COLUMNS

    mrc = pd.read_parquet(micro_run / "results/micro/tables/mrc.parquet")
    assert tuple(mrc.columns) == MRC_COLUMNS
    assert set(mrc["group"]) <= {"classification→generation", "generation→classification", "ood"}
    assert (mrc["n_pairs"] > 0).all()
    learned = pd.read_parquet(micro_run / "results/micro/tables/learned_during_pretraining.parquet")
    assert set(learned["eval_set"]) == {"toy_nli", "toy_paraphrase_ood", "toy_summary", "toy_qgen"}
    # The change table is split by that classification (Table 6's learned / not learned).
    change = pd.read_parquet(micro_run / "results/micro/tables/change_per_checkpoint.parquet")
    in_domain = change[change["relation"] == "in-domain"]  # toy_nli only
    assert in_domain["learned"].tolist() == [learned.set_index("eval_set").loc["toy_nli", "learned"]]
    slope = pd.read_parquet(micro_run / "results/micro/tables/change_slope.parquet")
    fit, consecutive = slope[slope["kind"] == "fit"], slope[slope["kind"] == "consecutive"]
    assert fit["n_steps"].eq(1).all() and fit["slope_avg_diff"].isna().all()  # one fine-tuned checkpoint
    assert (consecutive["slope_avg_diff"] == 0).all() and (consecutive["checkpoint"] == "step12").all()
    sensitivity = pd.read_parquet(micro_run / "results/micro/tables/format_sensitivity.parquet")
    assert len(sensitivity) == 6 * 4 and sensitivity["value_instruct"].isna().all()  # default and io only


def test_the_lr_grid_is_selected_on_validation(micro_run):
    results = micro_run / "results/micro"
    perf = pd.read_parquet(results / "tables/performance.parquet")
    for checkpoint in ("step12",):
        grid = {lr: read_json(results / f"finetune/{checkpoint}/toy_summary/full/lr{lr}/seed0/summary.json")
                for lr in ("0.001", "0.01")}  # fmt: skip
        best = min(grid, key=lambda lr: grid[lr]["validation"]["loss"])
        selection = read_json(results / f"finetune/{checkpoint}/toy_summary/full/selected/seed0.json")
        assert selection["lr"] == float(best) and selection["path"].endswith(f"lr{best}/seed0/model")
        assert [c["value"] for c in selection["candidates"]] == [grid[lr]["validation"]["loss"] for lr in grid]
        rows = perf[(perf["checkpoint"] == checkpoint) & (perf["train_task"] == "toy_summary")]
        assert set(rows["lr"]) == {float(best)}
    lora = read_json(results / "finetune/step12/toy_nli/lora/lr0.001/seed0/summary.json")
    assert lora["n_trainable_parameters"] < lora["n_parameters"] / 5
    assert "lp_head_norm" in read_json(results / "finetune/step12/toy_nli/lpft/lr0.001/seed0/summary.json")
    assert len(pd.read_parquet(results / "data/validation/toy_summary.parquet")) == 16


def test_values_are_recomputable_from_per_example_outputs(micro_run):
    perf = pd.read_parquet(micro_run / "results/micro/tables/performance.parquet")
    pred = pd.read_parquet(micro_run / "results/micro/eval/base/step12/predictions.parquet")
    assert {"prompt_hash", "prediction", "gold", "score", "label_logprobs"} <= set(pred.columns)
    nli = pred[(pred["eval_set"] == "toy_nli") & (pred["format"] == "default")]
    assert len(nli) == 12 and all(len(x) == 3 for x in nli["label_logprobs"])
    assert (nli["score"] == (nli["prediction"] == nli["gold"]).astype(float)).all()
    row = perf[
        (perf["checkpoint"] == "step12")
        & (perf["method"] == "base")
        & (perf["eval_set"] == "toy_nli")
        & (perf["format"] == "default")
    ]
    assert row["value"].item() == pytest.approx(nli["score"].mean())


def test_checkpoints_and_finetuned_models_are_hub_folders(micro_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in [
        micro_run / "results/micro/checkpoints/step4",
        micro_run / "results/micro/finetune/step12/toy_nli/full/lr0.001/seed0/model",
    ]:
        assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
        AutoTokenizer.from_pretrained(path)
        AutoModelForCausalLM.from_pretrained(path)
    log = pd.read_parquet(micro_run / "results/micro/finetune/step12/toy_nli/full/lr0.001/seed0/train_log.parquet")
    assert list(log["step"]) == [1, 2, 3] and log["loss"].notna().all()
    # the resumable state is removed once training has finished
    assert not list((micro_run / "results/micro/.state/finetune").rglob("state.pt"))


FIGURES = ["base_vs_finetuned", "average_change", "base_vs_finetuned_toy_nli", "cross_task", "format_sensitivity"]
FIGURES += ["learning_dynamics_toy_nli"]  # a column per method


def test_seed_summary_of_the_micro_study(micro_run):
    tables = micro_run / "results/micro/tables"
    perf, summary = pd.read_parquet(tables / "performance.parquet"), pd.read_parquet(tables / "seed_summary.parquet")
    # One seed per run: a summary row per performance row, its mean the row's value, no spread.
    keys = ["checkpoint", "train_task", "method", "eval_set", "format", "metric"]
    both = perf.merge(summary, on=keys, how="outer", validate="one_to_one", indicator=True)
    assert (both["_merge"] == "both").all() and len(both) == len(perf) == 48
    assert (both["value_mean"] == both["value"]).all() and (both["n_seeds"] == 1).all()
    assert both["value_std"].isna().all()


def test_figures_exist(micro_run):
    figs = micro_run / "results/micro/figures"
    for name in FIGURES:
        assert (figs / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert "</svg>" in (figs / f"{name}.svg").read_text(), name
    assert not (figs / "ood.png").exists()  # the micro study has no OOD pair
    probes = pd.read_parquet(micro_run / "results/micro/finetune/step12/toy_nli/lora/lr0.001/seed0/probes.parquet")
    assert sorted(probes["step"].unique()) == [0, 2, 3] and set(probes["response_type"]) >= {"gold", "other_label"}


# The jobs downstream of the performance table, and of an aggregate setting (the probe figures too).
FROM_PERFORMANCE = {
    "performance_table",
    "analysis_performance",
    "analysis_seeds",
    "analysis_change",
    "analysis_transfer",
    "analysis_formats",
    "report_table_performance",
    "report_table_seeds",
    "report_table_change",
    "report_table_transfer",
    "report_table_formats",
    "all",
    "aggregate",
}
AGGREGATION_JOBS = FROM_PERFORMANCE | {"analysis_dynamics", "report_table_dynamics"}


def planned_jobs(out) -> dict[str, int]:
    """Rule -> job count from a dry run's "Job stats" table."""
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    stats = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {line.split()[0]: int(line.split()[1]) for line in stats.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}  # fmt: skip


def test_an_analysis_setting_reruns_only_aggregation(micro_run, tmp_path):
    import yaml

    cfg = yaml.safe_load((ROOT / "tests/configs/micro.yaml").read_text())
    cfg["aggregate"]["bootstrap"]["resamples"] = 500
    cfg["aggregate"]["figure_format"] = "io"
    changed = tmp_path / "micro.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(run_snakemake(micro_run, changed, "-n"))
    assert {"performance_table", "analysis_transfer", "analysis_formats", "analysis_performance"} <= set(jobs)
    assert set(jobs) <= AGGREGATION_JOBS, jobs
    # The documented target regenerates every table and figure and touches nothing upstream.
    jobs = planned_jobs(snakemake(micro_run, "aggregate", "--forcerun", "performance_table", "-n"))
    assert set(jobs) == FROM_PERFORMANCE - {"all"}, jobs


def test_report_holds_every_table_and_figure_with_captions(micro_run, tmp_path):
    report = tmp_path / "report.html"
    out = snakemake(micro_run, "--report", str(report))
    assert out.returncode == 0, out.stderr[-3000:]
    html = report.read_text()
    tables = ["performance", "seed_summary", "change_per_checkpoint", "change_slope", "mrc",
              "learned_during_pretraining", "format_sensitivity", "format_sensitivity_per_checkpoint",
              "derive_stats", "learning_dynamics"]  # fmt: skip
    for name in [f"{t}.html" for t in tables] + [f"{f}.png" for f in FIGURES]:
        assert name in html, name
    for caption in ("Mean ratio of change", "Prompt-format sensitivity", "Trend of the average change",
                    "Learning dynamics during fine-tuning", "Transfer of fine-tuning",
                    "The derivation stage"):  # fmt: skip
        assert caption in html, caption
    # Grouped by analysis: each analysis is a category holding its figures and its tables.
    for analysis in ("Performance across checkpoints", "Change after fine-tuning", "Transfer: OOD and cross-task",
                     "Prompt formats", "Learning dynamics", "Dissecting: what fine-tuning changes"):  # fmt: skip
        assert analysis in html, analysis


def test_derivation_writes_the_toy_variants_and_their_statistics(micro_run):
    res = micro_run / "results/micro"
    variants = pd.read_parquet(res / "derive/variants.parquet")
    assert len(variants) == 20 * 4 and set(variants["backend"]) == {"toy"}
    assert set(variants["variant"]) == {"topic", "style:casual", "style:rap", "counterfactual"}
    corpus = pd.read_parquet(res / "derive/corpus.parquet")
    assert set(variants["original_id"]) == set(corpus["doc_id"]) and len(corpus) == 20
    stats = pd.read_parquet(res / "tables/derive_stats.parquet").set_index("variant")
    assert (stats["sent"] == 20).all() and (stats["accepted"] == 20).all() and (stats["cache_hits"] == 0).all()
    assert (res / ".state/derive/replies.sqlite").exists()


def test_second_run_does_nothing(micro_run):
    start = time.time()
    out = snakemake(micro_run)
    elapsed = time.time() - start
    assert out.returncode == 0
    assert "Nothing to be done" in out.stdout + out.stderr
    assert elapsed < 10
