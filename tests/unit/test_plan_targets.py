"""The plan lists every target of a study and builds every path; checked without Snakemake."""

import yaml
from snakemake.utils import validate

from conftest import ROOT
from ptft.analysis import ANALYSES
from ptft.analysis.registry import Analysis, Table, register
from ptft.plan import RUN_FILES, build_plan

SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")


def plan_of(path):
    cfg = yaml.safe_load((ROOT / path).read_text())
    validate(cfg, SCHEMA, set_default=True)
    return build_plan(cfg)


def test_targets_of_the_toy_study():
    plan = plan_of("config.yaml")
    tables = set(plan.tables())
    assert tables == {"performance", "seed_summary", "change_per_checkpoint", "change_slope",
                      "learned_during_pretraining", "mrc", "format_sensitivity", "format_sensitivity_per_checkpoint",
                      "derive_stats", "dissect_change", "dissect_components", "learning_dynamics"}  # fmt: skip
    figures = set(plan.figures())
    per_set = {f"base_vs_finetuned_{e}" for e in plan.eval_sets}
    assert per_set | {"base_vs_finetuned", "average_change", "ood", "cross_task", "format_sensitivity",
                      "dissecting"} <= figures  # fmt: skip
    probe_figures = {f for f in figures if f.startswith("learning_dynamics_")}
    assert probe_figures == {"learning_dynamics_toy_nli"}  # a column per method
    targets = plan.targets()
    assert len(targets) == len(set(targets)) == 2 * len(tables) + 2 * len(figures)
    assert all(t.startswith("results/toy/") for t in targets)
    assert "results/toy/report/seed_summary.html" in targets
    assert {"results/toy/figures/ood.png", "results/toy/figures/ood.svg"} <= set(targets)
    items = {(i.kind, i.name): i for i in plan.report_items()}
    assert len(items) == len(tables) + len(figures)
    mrc = items["table", "mrc"]
    assert (mrc.path, mrc.category) == ("results/toy/report/mrc.html", "Transfer: OOD and cross-task")
    assert mrc.caption.startswith("Mean ratio of change")
    assert items["figure", "ood"].path == "results/toy/figures/ood.png"


def test_targets_follow_the_study():
    plan = plan_of("tests/configs/micro.yaml")
    # The micro study derives variants but fine-tunes no corpus: no Dissecting tables or figure.
    assert "derive_stats" in plan.tables() and "dissect_change" not in plan.tables()
    assert "dissecting" not in plan.figures()
    # Its probes are on toy_nli only, for each of the three methods there.
    assert {f for f in plan.figures() if f.startswith("learning_dynamics")} == {"learning_dynamics_toy_nli"}
    # Eval sets scored in two formats: the format figure exists.
    assert "format_sensitivity" in plan.figures()


def test_paths_of_a_run_and_of_its_selection():
    plan = plan_of("tests/configs/micro.yaml")
    run = next(m for m in plan.training_runs if m.train_task == "toy_summary" and m.lr == 0.01)
    assert run.run == "step12/toy_summary/full/lr0.01/seed0"
    assert plan.run_file(run.run, "model") == "results/micro/finetune/step12/toy_summary/full/lr0.01/seed0/model"
    assert plan.state_dir(run.run) == "results/micro/.state/finetune/step12/toy_summary/full/lr0.01/seed0"
    selected = next(m for m in plan.finetune_runs if m.train_task == "toy_summary")
    assert selected.selected and selected.run == "step12/toy_summary/full/selected/seed0"
    assert plan.selection_path(selected.run) == "results/micro/finetune/step12/toy_summary/full/selected/seed0.json"
    assert plan.predictions_path(selected.id) == (
        "results/micro/eval/ft/step12/toy_summary/full/selected/seed0/predictions.parquet"
    )
    assert plan.checkpoint_path("step12") == "results/micro/checkpoints/step12"  # a toy checkpoint is a folder
    # Rules use the same methods with the run's folder as their wildcard, and look the run up by it.
    assert plan.run_file("{run}", "summary").format(run=run.run) == plan.run_file(run.run, "summary")
    assert plan.training_run(run.run) == run and plan.training_run(selected.run) == selected
    assert set(RUN_FILES) == {"model", "log", "probes", "summary", "snapshots"}


def test_every_table_has_one_caption_and_one_analysis():
    names = [t.name for a in ANALYSES.values() for t in a.tables]
    assert len(names) == len(set(names))
    for analysis in ANALYSES.values():
        assert analysis.category
        for table in analysis.tables:
            assert len(table.caption) > 40, table.name
        if analysis.plot is not None:
            assert len(analysis.figure_caption) > 40, analysis.name


def test_a_registered_analysis_becomes_targets():
    plan = plan_of("tests/configs/micro.yaml")
    extra = Analysis(
        name="test_extra",
        category="Extra",
        tables=(Table("extra_table", "A table registered by this test, to see the plan list it.", lambda p, s: p),),
        figures=lambda plan: ["extra_figure"],
    )
    register(extra)
    try:
        assert plan.tables()["extra_table"] == "test_extra"
        assert {"results/micro/tables/extra_table.parquet", "results/micro/report/extra_table.html",
                "results/micro/figures/extra_figure.png"} <= set(plan.targets())  # fmt: skip
    finally:
        del ANALYSES["test_extra"]
    assert "extra_table" not in plan.tables()
