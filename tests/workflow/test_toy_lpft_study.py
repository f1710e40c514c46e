"""workflow/studies/toy-lpft.yaml end to end: the LP-FT paper's findings on the toy world, over five seeds.

Asserted on the in-domain eval set of the fine-tuned (last) checkpoint, each with the Student-t
interval over seeds of a paired difference per seed (the seed summary's interval): after LP the
head's norm is far above its initial (random) value; LP-FT changes the features less than FT;
LP-FT is less calibrated than FT before temperature scaling, and temperature scaling lowers its
ECE. (FT itself is well calibrated in this world, so scaling has little to repair there: not
asserted.) The study runs once for the module (about 6 minutes on 2 cores: ``make test-studies``).
"""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import ROOT, run_study

STUDY = ROOT / "workflow/studies/toy-lpft.yaml"
LAST, TASK = "step200", "toy_nli_cls"
METHODS = ("lp", "full", "lpft", "lora", "lp_lora")

pytestmark = pytest.mark.study


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    _, root = run_study(tmp_path_factory, STUDY)
    names = ("performance", "calibration", "features", "calibration_seeds", "features_seeds")
    return root, {n: pd.read_parquet(root / "tables" / f"{n}.parquet") for n in names}


def per_seed(table: pd.DataFrame, method: str, metric: str, eval_set: str = TASK) -> pd.Series:
    rows = table[(table["checkpoint"] == LAST) & (table["method"] == method) & (table["eval_set"] == eval_set)
                 & (table["metric"] == metric)]  # fmt: skip
    return rows.set_index("seed")["value"].sort_index()


def t_interval(values) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def test_every_method_and_every_table_and_figure_is_there(tables):
    root, t = tables
    perf = t["performance"]
    assert set(perf["method"]) == set(METHODS)  # no base rows: a pre-trained head is untrained
    assert set(perf["eval_set"]) == {TASK, f"{TASK}_ood"} and set(perf["format"]) == {"default"}
    assert set(perf["checkpoint"]) == {LAST} and (perf.groupby("method")["seed"].nunique() == 5).all()
    for name in ("calibration", "features"):
        assert len(t[name]) and t[name]["value"].notna().all(), name
    for figure in ("lpft_accuracy", "lpft_features", f"lpft_reliability_{TASK}", f"lpft_reliability_{TASK}_ood"):
        assert (root / "figures" / f"{figure}.png").stat().st_size > 0
        assert (root / "figures" / f"{figure}.svg").stat().st_size > 0
    # The seed summary is the Student-t summary of the per-seed rows.
    summary = t["features_seeds"]
    row = summary[(summary["checkpoint"] == LAST) & (summary["method"] == "full") & (summary["eval_set"] == TASK)
                  & (summary["metric"] == "feature_change")].iloc[0]  # fmt: skip
    mean, low, high = t_interval(per_seed(t["features"], "full", "feature_change"))
    assert row["value_mean"] == pytest.approx(mean) and row["ci_low"] == pytest.approx(low)
    assert row["ci_high"] == pytest.approx(high) and row["n_seeds"] == 5


def test_after_lp_the_head_norm_is_far_above_its_initial_value(tables):
    _, t = tables
    lp = per_seed(t["features"], "lp", "head_norm")
    initial = per_seed(t["features"], "full", "head_norm_start")  # the random head full fine-tuning starts from
    print(f"head norm after LP {lp.tolist()}; random head {initial.tolist()}")
    assert lp.min() > 10 * initial.max()
    # LP-FT starts from that head.
    assert per_seed(t["features"], "lpft", "head_norm_start").to_numpy() == pytest.approx(lp.to_numpy(), rel=1e-4)


def test_lp_ft_changes_the_features_less_than_ft(tables):
    _, t = tables
    full, lpft = per_seed(t["features"], "full", "feature_change"), per_seed(t["features"], "lpft", "feature_change")
    mean, low, high = t_interval(full - lpft)
    print(f"feature change FT {full.tolist()}, LP-FT {lpft.tolist()}; FT − LP-FT {mean:.3f} [{low:.3f}, {high:.3f}]")
    assert low > 0 and (full > lpft).all()


def test_lp_ft_is_less_calibrated_than_ft_and_temperature_scaling_lowers_its_ece(tables):
    _, t = tables
    before = {m: per_seed(t["calibration"], m, "ece_before") for m in ("full", "lpft")}
    after = per_seed(t["calibration"], "lpft", "ece_after")
    mean, low, high = t_interval(before["lpft"] - before["full"])
    print(f"ECE before scaling: FT {before['full'].round(4).tolist()}, LP-FT {before['lpft'].round(4).tolist()}; "
          f"LP-FT − FT {mean:.4f} [{low:.4f}, {high:.4f}]")  # fmt: skip
    assert low > 0
    mean, low, high = t_interval(before["lpft"] - after)
    print(f"LP-FT ECE after scaling {after.round(4).tolist()}; drop {mean:.4f} [{low:.4f}, {high:.4f}]")
    assert low > 0
    for method in METHODS:  # scaling divides the logits: the argmax, and so the accuracy, stays
        accuracy = [per_seed(t["calibration"], method, f"accuracy_{w}") for w in ("before", "after")]
        assert (accuracy[0] == accuracy[1]).all(), method
