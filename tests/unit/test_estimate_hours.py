"""The GPU-hours estimate of a study (tests/benchmarks/estimate_study_hours.py) against hand counts."""

import sys

import pytest

from conftest import ROOT
from ptft.config import load_study
from ptft.plan import build_plan

sys.path.insert(0, str(ROOT / "tests/benchmarks"))
from estimate_study_hours import estimate  # noqa: E402

MEASURED = {
    "device": "test",
    "finetune": [{"profile": p, "method": m, "ours": {"tokens_per_s": r}}
                 for p, m, r in [("mnli", "full", 1000.0), ("xsum", "full", 10000.0),
                                 ("mnli", "lora", 500.0), ("xsum", "lora", 5000.0)]],
    "evaluate": [{"batch_size": 16, "tokenprob": {"items_per_s": 100.0}, "generation": {"items_per_s": 10.0},
                  "multiple_choice": {"items_per_s": 50.0}}],
}  # fmt: skip


def test_amuro_char_estimate_counts_every_run_and_evaluation(tmp_path):
    plan = build_plan(load_study(ROOT / "workflow/studies/amuro-char-olmo1b.yaml"), tmp_path)
    table = estimate(plan, MEASURED).set_index("name")
    mnli = table.loc["mnli"]  # the training task; its eval sets are mnli_matched and mnli_mismatched
    assert mnli["stage"] == "finetune"
    # 6000 examples x 3 epochs / 8 a step = 2250 steps of 8 examples of 60 tokens, at 1000 tokens/s
    assert mnli["jobs"] == 8 and mnli["tokens"] == 2250 * 8 * 60
    assert mnli["hours"] == pytest.approx(8 * 2250 * 8 * 60 / 1000 / 3600)
    tulu = table.loc["tulu"]
    assert tulu["items"] == 16307 * 5 and tulu["assumed"]  # 5 % of the 326,154-example mixture, 5 epochs
    evals = table[table["stage"] != "finetune"]
    # XSum: 8 base models x 3 formats, and 24 fine-tuned models (xsum in-domain; mnli and paws
    # cross-task) x 3 formats = 96 passes of 11,334 items at 10 items/s
    xsum = evals.loc["xsum"]
    assert xsum["jobs"] == 96 and xsum["hours"] == pytest.approx(96 * 11334 / 10 / 3600)
    assert evals.loc["rte", "jobs"] == 16 and evals.loc["hellaswag", "stage"] == "evaluate (multiple_choice)"
    assert len(evals) == 19
    grid = estimate(plan, MEASURED, lr_grid=3).set_index("name")
    assert grid.loc["rte", "jobs"] == 8 + 3 * 8  # base models once, fine-tuned ones for every lr


def test_compiled_rates_fixed_shots_and_the_compilation_row(tmp_path):
    plan = build_plan(load_study(ROOT / "workflow/studies/amuro-char-olmo1b.yaml"), tmp_path)

    def path(rate, first):
        return {"items_per_s": rate, "seconds": 10.0, "first_pass_s": first}

    paths = {"tokenprob": path(100.0, 40.0), "generation": path(10.0, 100.0), "multiple_choice": path(50.0, 12.0)}
    evaluated = {"device": "test", "evaluate": [{
        "batch_size": 64, "today": {k: path(1.0, 10.0) for k in paths}, "compiled": paths,
        "fixed_shots": {"tokenprob": {"shared_prefix": {"items_per_s": 200.0}},
                        "generation": {"shared_prefix": {"items_per_s": 20.0},
                                       "whole": {"items_per_s": 40.0}}}}]}  # fmt: skip

    def evals(table):
        return table[table["stage"] != "finetune"].set_index("name")

    table = evals(estimate(plan, MEASURED, 64, evaluated=evaluated, mode="compiled"))
    assert table.loc["xsum", "hours"] == pytest.approx(96 * 11334 / 10 / 3600)
    # One compilation per evaluation job (48 models): each path's first pass less its second.
    assert table.loc["torch.compile", "jobs"] == 48
    assert table.loc["torch.compile", "seconds_per_job"] == pytest.approx(30 + 90 + 2)
    fixed = evals(estimate(plan, MEASURED, 64, evaluated=evaluated, mode="compiled", fewshot="fixed"))
    # Compiled generation runs fixed shots as whole prompts (generate.PREFIX_WHEN_COMPILED).
    assert fixed.loc["xsum", "hours"] == pytest.approx(table.loc["xsum", "hours"] / 4)
    assert fixed.loc["rte", "hours"] == pytest.approx(table.loc["rte", "hours"] / 2)
    assert fixed.loc["hellaswag", "hours"] == table.loc["hellaswag", "hours"]  # multiple choice: no prefix cache


def test_fine_tuning_priced_at_the_compiled_loop_with_or_without_its_captures(tmp_path):
    plan = build_plan(load_study(ROOT / "workflow/studies/amuro-char-olmo1b.yaml"), tmp_path)
    compiled = {"tokens_per_s": 4000.0, "cuda_graphs": {"tokens_per_s_without_captures": 5000.0}}
    measured = {**MEASURED, "finetune": [{**r, "ours_compiled": compiled} for r in MEASURED["finetune"]]}

    def mnli_hours(**kw):
        return estimate(plan, measured, **kw).set_index("name").loc["mnli", "hours"]

    hours = 8 * 2250 * 8 * 60 / 3600  # 8 runs of 2250 steps of 8 examples of 60 tokens, over the rate
    assert mnli_hours() == pytest.approx(hours / 1000)
    assert mnli_hours(finetune_path="ours_compiled") == pytest.approx(hours / 4000)
    assert mnli_hours(finetune_path="ours_compiled", steady=True) == pytest.approx(hours / 5000)
    assert mnli_hours(steady=True) == pytest.approx(hours / 1000)  # a run without graphs has no captures
