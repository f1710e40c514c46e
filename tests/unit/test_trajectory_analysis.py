"""The trajectory analysis (forgetting curves, the summary over seeds per snapshot step), the registry's tables
built from another input than the performance table, and the Dissecting figures over train sizes and steps."""

from __future__ import annotations

import re
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from ptft import io, provenance
from ptft.aggregate.figures import plot_dissect_components, plot_dissecting, plot_trajectory
from ptft.analysis import ANALYSES, registry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SETTINGS = {"figure_format": "default", "bootstrap": {"resamples": 200, "confidence": 0.95, "seed": 0}}
STEPS = {"step10": 10, "step20": 20, "step30": 30}
RECORD = {"name": "step10", "path": "x/step10"}


def trajectory_table() -> pd.DataFrame:
    """Snapshots at ft_step 0, 5, 10 of toy_paraphrase runs (seeds 0, 1) from 3 checkpoints, scored on their own
    eval set (in-domain, forgetting nothing) and on toy_summary (cross-task, forgetting), and of a toy_summary
    run from the paraphrase run of its seed (one seed)."""
    rows = []
    for checkpoint, step in STEPS.items():
        runs = [("toy_paraphrase", seed, None) for seed in (0, 1)]
        runs += [("toy_summary", 0, f"ft/{checkpoint}/toy_paraphrase/full/lr0.001/seed0")]
        for task, seed, parent in runs:
            for ft_step in (0, 5, 10):
                for eval_set, metric in (("toy_paraphrase", "accuracy"), ("toy_summary", "rougeL")):
                    own = eval_set == task
                    value = 0.5 + step / 100 + (0.02 * ft_step if own else -0.03 * ft_step) + 0.01 * seed
                    rows.append({
                        "study": "t", "checkpoint": checkpoint, "step": step, "tokens": None, "train_task": task,
                        "method": "full", "lr": 1e-3, "seed": seed, "train_size": None, "parent": parent,
                        "ft_step": ft_step, "lr_selected": None, "eval_set": eval_set, "eval_task": eval_set[4:],
                        "format": "default", "shots": 0, "relation": "in-domain" if own else "cross-task",
                        "metric": metric, "value": value, "ci_low": value - 0.04, "ci_high": value + 0.04, "n": 30,
                        "diff_ci_low": None, "diff_ci_high": None,
                    })  # fmt: skip
    return pd.DataFrame(rows).astype({"step": "Int64", "tokens": "Int64", "seed": "Int64", "train_size": "Int64",
                                      "parent": "string", "ft_step": "Int64", "lr_selected": "boolean"})  # fmt: skip


def dissect_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """dissect_change and dissect_components of toy_docs runs at train sizes 50, 150, 450, each with snapshots at
    ft_step 10 and 20, from 2 checkpoints, seeds 0 and 1."""
    change, comps = [], []
    for checkpoint, step in list(STEPS.items())[:2]:
        for size in (50, 150, 450):
            for seed in (0, 1):
                for ft_step in (10, 20):
                    key = {"checkpoint": checkpoint, "step": step, "train_task": "toy_docs", "method": "full",
                           "lr": 1e-3, "seed": seed, "train_size": size, "parent": None,
                           "ft_step": ft_step}  # fmt: skip
                    gain = size / 450 * ft_step / 20 + 0.1 * seed + step / 100
                    for variant, factor in (("original", "original"), ("cf", "facts"), ("topic", "topic")):
                        value = gain * {"original": 1.0, "facts": 0.6, "topic": 0.2}[factor]
                        change.append({**key, "variant": variant, "factor": factor, "ll_base": -3.0,
                                       "ll_ft": -3.0 + value, "change": value, "ci_low": value - 0.1,
                                       "ci_high": value + 0.1, "n": 20})  # fmt: skip
                    for component, share in (("facts", 0.4), ("topic", 0.4), ("style", 0.1), ("other", 0.1)):
                        value = gain * share
                        comps.append({**key, "component": component, "value": value, "ci_low": value - 0.1,
                                      "ci_high": value + 0.1, "n": 20})  # fmt: skip
    types = {"step": "Int64", "seed": "Int64", "train_size": "Int64", "parent": "string", "ft_step": "Int64"}
    return pd.DataFrame(change).astype(types), pd.DataFrame(comps).astype(types)


def svg_texts(path) -> list[str]:
    return re.findall(r">([^<>]+)</text>", path.with_suffix(".svg").read_text())


def test_run_analysis_builds_a_table_from_the_input_it_names(tmp_path):
    traj, perf = tmp_path / "trajectory.parquet", tmp_path / "performance.parquet"
    io.write_parquet(traj, trajectory_table(), {"checkpoints": [RECORD]})
    io.write_parquet(perf, pd.DataFrame({"value": [1.0]}), {"checkpoints": []})
    out = tmp_path / "tables" / "trajectory_seed_summary.parquet"
    inputs = {"trajectory": [str(traj)], "performance": [str(perf)]}
    registry.run_analysis("trajectory", inputs, SETTINGS, {"figures": []}, [str(out)], [])
    summary = pd.read_parquet(out)
    # 3 checkpoints × 3 steps × 2 eval sets, for the paraphrase runs (2 seeds) and the summary run (1 seed).
    assert len(summary) == 3 * 3 * 2 * 2 and sorted(summary["n_seeds"].unique()) == [1, 2]
    assert provenance.read(out)["checkpoints"] == [RECORD]  # the trajectory table's, not the performance table's
    with pytest.raises(ValueError, match="needs input 'trajectory'"):
        registry.run_analysis("trajectory", {"performance": [str(perf)]}, SETTINGS, {"figures": []}, [str(out)], [])
    assert registry.Table("x", "caption").source == "performance"  # the default
    assert ANALYSES["trajectory"].built_here == ("trajectory_seed_summary",)


def test_trajectory_analysis_follows_the_plans_snapshot_runs(tmp_path):
    analysis = ANALYSES["trajectory"]
    runs = (SimpleNamespace(train_task="toy_summary"), SimpleNamespace(train_task="toy_paraphrase"))
    plan = SimpleNamespace(snapshot_runs=runs, table_path=lambda name: f"tables/{name}.parquet")
    assert analysis.applies(plan) and analysis.figures(plan) == ["trajectory_toy_paraphrase", "trajectory_toy_summary"]
    assert analysis.spec(plan) == {"train_tasks": ["toy_paraphrase", "toy_summary"]}
    assert analysis.inputs(plan) == {"trajectory": ["tables/trajectory.parquet"],
                                     "performance": ["tables/performance.parquet"]}  # fmt: skip
    assert not analysis.applies(SimpleNamespace(snapshot_runs=())) and not analysis.applies(SimpleNamespace())
    # Its plot: one forgetting curve per train task.
    path = tmp_path / "trajectory.parquet"
    trajectory_table().to_parquet(path)
    spec = {"train_tasks": ["toy_paraphrase", "toy_summary"], "figures": analysis.figures(plan)}
    analysis.plot({"trajectory": [str(path)]}, SETTINGS, spec, tmp_path)
    for task in spec["train_tasks"]:
        assert (tmp_path / f"trajectory_{task}.png").read_bytes()[:8] == PNG_MAGIC
    texts = svg_texts(tmp_path / "trajectory_toy_paraphrase.png")
    assert {"toy_paraphrase · in-domain", "toy_summary · cross-task", "step10", "step30"} <= set(texts)
    assert texts.index("toy_paraphrase · in-domain") < texts.index("toy_summary · cross-task")  # own task first
    assert "Forgetting curve: toy_summary (full) ← toy_paraphrase (full)" in svg_texts(
        tmp_path / "trajectory_toy_summary.png")  # fmt: skip
    assert plt.get_fignums() == []


def test_trajectory_runs_of_several_sizes_get_rows_of_panels(tmp_path):
    traj = trajectory_table().query("train_task == 'toy_paraphrase'")
    sized = pd.concat([traj.assign(train_size=100), traj.assign(train_size=300)]).astype({"train_size": "Int64"})
    plot_trajectory(sized, "toy_paraphrase", "default", tmp_path / "t.png")
    titles = [t for t in svg_texts(tmp_path / "t.png") if "n=" in t]
    assert titles == ["toy_paraphrase (full) n=100"] * 2 + ["toy_paraphrase (full) n=300"] * 2
    with pytest.raises(ValueError, match="toy_nli"):
        plot_trajectory(sized, "toy_nli", "default", tmp_path / "none.png")
    assert plt.get_fignums() == []


def test_dissect_figures_by_size_and_by_step(tmp_path):
    change, comps = dissect_tables()
    plot_dissect_components(comps, "train_size", tmp_path / "by_size.png")
    plot_dissect_components(comps, "ft_step", tmp_path / "by_step.png")
    for name in ("by_size", "by_step"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    by_size = svg_texts(tmp_path / "by_size.png")
    assert {"facts", "topic", "style", "other", "50", "150", "450", "step10", "step20"} <= set(by_size)
    # Against the step, each size is a row of panels of its own (a title's second line).
    by_step = svg_texts(tmp_path / "by_step.png")
    assert [by_step.count(f"full n={n}") for n in (50, 150, 450)] == [4, 4, 4]
    with pytest.raises(ValueError, match="more than one ft_step"):
        plot_dissect_components(comps[comps["ft_step"] == 20], "ft_step", tmp_path / "none.png")
    # The dissecting figure: the final models at the largest size, as before the axes.
    plot_dissecting(change, comps, tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:8] == PNG_MAGIC
    assert plt.get_fignums() == []


def test_dissect_figures_follow_the_plan(tmp_path):
    analysis = ANALYSES["dissect"]

    def run(size=None, snapshots=False, task="toy_docs"):
        return SimpleNamespace(is_base=False, train_task=task, train_size=size, snapshots=snapshots)

    base = SimpleNamespace(is_base=True, train_task="none")
    plan = SimpleNamespace(dissect_task="toy_docs", dissect_models=(base, run(50), run(450)))
    assert analysis.figures(plan) == ["dissecting", "dissect_components_by_size"]
    plan = SimpleNamespace(dissect_task="toy_docs", dissect_models=(base, run(snapshots=True)))
    assert analysis.figures(plan) == ["dissecting", "dissect_components_by_step"]
    # A parent run of another task with a size of its own does not make the corpus runs a size sweep.
    plan = SimpleNamespace(dissect_task="toy_docs", dissect_models=(base, run(100, task="toy_chat"), run()))
    assert analysis.figures(plan) == ["dissecting"]
    # A plan whose models have neither attribute: the one figure.
    plain = SimpleNamespace(
        dissect_task="toy_docs", dissect_models=(base, SimpleNamespace(is_base=False, train_task="toy_docs"))
    )
    assert analysis.figures(plain) == ["dissecting"]
    assert analysis.figures(SimpleNamespace(dissect_task=None, dissect_models=())) == []
    change, comps = dissect_tables()
    inputs = {}
    for name, table in (("change", change), ("components", comps)):
        table.to_parquet(tmp_path / f"{name}.parquet")
        inputs[name] = [str(tmp_path / f"{name}.parquet")]
    figures = ["dissecting", "dissect_components_by_size", "dissect_components_by_step"]
    analysis.plot(inputs, SETTINGS, {"figures": figures}, tmp_path)
    for name in figures:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
