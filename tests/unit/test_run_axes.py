"""Train sizes and runs from runs in the analyses and figures: rows of different sizes and parents stay apart,
and a line over several seeds draws their spread."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ptft.aggregate.figures import _line, plot_base_vs_finetuned_grid, primary_metric_rows
from ptft.analysis import ANALYSES
from ptft.analysis.runs import final_rows, largest_size_rows, parent_config, parent_label, parent_run, run_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SETTINGS = {"figure_format": "default", "learned_min_gain": 0.05,
            "bootstrap": {"resamples": 200, "confidence": 0.95, "seed": 0}}  # fmt: skip
STEPS = {"step10": 10, "step20": 20}
EVAL = {"toy_paraphrase": ("paraphrase", "accuracy"), "toy_summary": ("summary", "rougeL")}
RELATION = {("toy_paraphrase", "toy_paraphrase"): "in-domain", ("toy_paraphrase", "toy_summary"): "cross-task",
            ("toy_summary", "toy_summary"): "in-domain", ("toy_summary", "toy_paraphrase"): "cross-task"}  # fmt: skip


def axes_performance() -> pd.DataFrame:
    """A performance table of 2 checkpoints, 2 eval sets in 2 formats: base models; toy_paraphrase at train sizes
    100 and 200; toy_summary from the checkpoint and, as a child run, from the size-200 paraphrase run of its seed;
    every run with seeds 0 and 1."""
    runs = [("none", "base", None, None, None)]
    runs += [("toy_paraphrase", "full", 1e-3, s, (n, None)) for n in (100, 200) for s in (0, 1)]
    runs += [("toy_summary", "full", 1e-3, s, (None, None)) for s in (0, 1)]
    runs += [("toy_summary", "full", 1e-3, s, (None, f"ft/{{c}}/toy_paraphrase/n200/full/lr0.001/seed{s}"))
             for s in (0, 1)]  # fmt: skip
    rows = []
    for checkpoint, step in STEPS.items():
        for task, method, lr, seed, axes in runs:
            size, parent = axes or (None, None)
            for eval_set, (eval_task, metric) in EVAL.items():
                for i, fmt in enumerate(("default", "io")):
                    value = 0.3 + step / 100 + (0 if method == "base" else 0.1 + 0.05 * (seed or 0)) + 0.02 * i
                    value += (size or 0) / 2000 + (0.1 if parent else 0)
                    rows.append({
                        "study": "axes", "checkpoint": checkpoint, "step": step, "tokens": None, "train_task": task,
                        "method": method, "lr": lr, "seed": seed, "train_size": size,
                        "parent": parent.format(c=checkpoint) if parent else None,
                        "ft_step": 0 if method == "base" else 40, "lr_selected": None, "eval_set": eval_set,
                        "eval_task": eval_task, "format": fmt, "shots": 2 if method == "base" else 0,
                        "relation": "pretraining" if method == "base" else RELATION[(task, eval_set)],
                        "metric": metric, "value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 20,
                        "diff_ci_low": None, "diff_ci_high": None,
                    })  # fmt: skip
    perf = pd.DataFrame(rows)
    return perf.astype({"step": "Int64", "tokens": "Int64", "lr": "float64", "seed": "Int64", "train_size": "Int64",
                        "parent": "string", "ft_step": "Int64", "lr_selected": "boolean",
                        "diff_ci_low": "float64", "diff_ci_high": "float64"})  # fmt: skip


def build(analysis: str, table: str, perf: pd.DataFrame) -> pd.DataFrame:
    return ANALYSES[analysis].table(table).build(perf, SETTINGS)


def test_run_identity_helpers():
    assert parent_run("ft/step10/a/n200/full/lr0.001/seed1") == "ft/step10/a/n200/full/lr0.001"
    assert parent_run(pd.NA) is None and parent_run(None) is None
    # Each seed of a chain runs from the same seed; a line across checkpoints is the configuration alone.
    chain = "ft/step10/a/full/lr0.001/seed1/then/b/full/lr0.01/seed1"
    assert parent_run(chain) == "ft/step10/a/full/lr0.001/then/b/full/lr0.01"
    assert parent_config(chain) == "a/full/lr0.001/then/b/full/lr0.01" and parent_label(chain) == "b (full)"
    assert parent_config("ft/step10/a/n200/full/lr0.001/seed1") == "a/n200/full/lr0.001"
    assert parent_label(parent_config("ft/step10/a/n200/full/lr0.001/seed1")) == "a n=200 (full)"
    assert parent_label("ft/step200/toy_chat/instruct/lr0.001/seed0") == "toy_chat (instruct)"
    assert parent_label("ft/step10/a/n200/full/selected") == "a n=200 (full)"
    # A run from a run from a run: the label is of the last run of the chain.
    assert parent_label("ft/step10/a/full/lr0.001/seed0/then/b/lora/lr1e-05/seed0") == "b (lora)"
    assert run_label("toy_summary", None, "ft/step200/toy_chat/instruct/lr0.001/seed0") == (
        "toy_summary ← toy_chat (instruct)")  # fmt: skip
    assert run_label("toy_para", 100) == "toy_para n=100" and run_label("toy_para", pd.NA, pd.NA) == "toy_para"
    runs = pd.DataFrame({"checkpoint": "c", "train_task": "t", "method": "full", "lr": 0.1,
                         "seed": [0, 0, 1, 1, 0], "train_size": [10, 10, 10, 10, 20], "ft_step": [5, 10, 5, 8, 4],
                         "value": range(5)})  # fmt: skip
    runs = runs.astype({"train_size": "Int64", "ft_step": "Int64"})
    assert final_rows(runs)["value"].tolist() == [1, 3, 4]  # each run's (and seed's) last step
    assert largest_size_rows(final_rows(runs))["value"].tolist() == [4]
    assert len(final_rows(runs.drop(columns=["train_size", "ft_step"]))) == 5  # a table without the axes: all


def test_derived_tables_keep_sizes_and_parents_apart():
    perf = axes_performance()
    assert len(perf) == 2 * 9 * 2 * 2  # checkpoints × models × eval sets × formats
    seeds = build("seeds", "seed_summary", perf)
    finetuned = seeds[seeds["method"] != "base"]
    # Per checkpoint, eval set and format: 2 paraphrase sizes, the summary run and its child run.
    assert len(seeds) == 2 * 2 * 2 * (1 + 4) and (finetuned["n_seeds"] == 2).all()
    assert finetuned["ci_low"].notna().all() and seeds.loc[seeds["method"] == "base", "ci_low"].isna().all()
    assert sorted(finetuned["train_size"].dropna().unique()) == [100, 200]
    child = finetuned[finetuned["parent"].notna()]
    assert len(child) == 8 and set(child["parent"]) == {f"ft/{c}/toy_paraphrase/n200/full/lr0.001" for c in STEPS}
    # Change after fine-tuning: every fine-tuned model of the figure format against its checkpoint's base.
    change = build("change", "change_per_checkpoint", perf)
    assert len(change) == 2 * 2 and change["n_pairs"].sum() == 2 * 8 * 2
    assert len(build("change", "learned_during_pretraining", perf)) == 2
    mrc = build("transfer", "mrc", perf).set_index(["group", "checkpoint"])
    assert len(mrc) == 2 * 3
    assert mrc.loc[("classification→generation", "all"), "n_pairs"] == 2 * 4  # paraphrase runs on toy_summary
    assert mrc.loc[("generation→classification", "all"), "n_pairs"] == 2 * 4  # summary runs, child runs included
    sensitivity = build("formats", "format_sensitivity", perf)
    assert len(sensitivity) == 2 * 9 * 2 and sensitivity["range"].to_numpy() == pytest.approx(0.02)
    summary = build("formats", "format_sensitivity_per_checkpoint", perf)
    assert len(summary) == 2 * (1 + 2 + 1 + 1) and (summary.loc[summary["method"] != "base", "n_eval_sets"] == 4).all()
    assert set(summary["parent"].dropna()) == {f"ft/{c}/toy_paraphrase/n200/full/lr0.001" for c in STEPS}


def test_figures_name_sizes_and_parents(tmp_path):
    perf = axes_performance()
    plot_base_vs_finetuned_grid(primary_metric_rows(perf), ["toy_paraphrase", "toy_summary"], "default",
                                tmp_path / "grid.png")  # fmt: skip
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG_MAGIC
    texts = re.findall(r">([^<>]+)</text>", (tmp_path / "grid.svg").read_text())
    legend = [t for t in texts if t.startswith(("toy_", "base")) and "·" not in t]  # not the panel titles
    assert legend == ["base", "toy_paraphrase n=100", "toy_paraphrase n=200", "toy_summary",
                      "toy_summary ← toy_paraphrase n=200 (full)"]  # fmt: skip
    assert plt.get_fignums() == []


@pytest.mark.parametrize("name", ["performance", "change", "transfer", "formats"])
def test_analysis_figures_of_a_study_with_the_axes(tmp_path, name):
    perf_path = tmp_path / "performance.parquet"
    axes_performance().to_parquet(perf_path)
    analysis = ANALYSES[name]
    spec = {"performance": {"eval_sets": ["toy_paraphrase", "toy_summary"]}, "transfer": {"relations": ["cross-task"]},
            "formats": {"eval_sets": ["toy_paraphrase", "toy_summary"]}}.get(name, {})  # fmt: skip
    figures = {"performance": ["base_vs_finetuned", *(f"base_vs_finetuned_{e}" for e in EVAL)],
               "change": ["average_change"], "transfer": ["cross_task"], "formats": ["format_sensitivity"]}  # fmt: skip
    figures = figures[name]
    analysis.plot({"performance": [str(perf_path)]}, SETTINGS, {**spec, "figures": figures}, tmp_path)
    for figure in figures:
        assert (tmp_path / f"{figure}.png").read_bytes()[:8] == PNG_MAGIC


def band(rows: pd.DataFrame, x: str = "step") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, line, band) that :func:`_line` draws for ``rows``."""
    fig, ax = plt.subplots()
    try:
        _line(ax, rows, "tab:blue", "-", "o", "line", x=x)
        line = ax.lines[0]
        vertices = ax.collections[0].get_paths()[0].vertices
        return line.get_xdata(), line.get_ydata(), vertices
    finally:
        plt.close(fig)


def test_a_line_over_seeds_draws_their_spread():
    # Two seeds × two lrs at step 10: each seed's value is the mean over its lrs (0.5, 0.7).
    rows = pd.DataFrame({"step": [10, 10, 10, 10, 20], "seed": [0, 0, 1, 1, 0], "lr": [1, 2, 1, 2, 1],
                         "value": [0.4, 0.6, 0.6, 0.8, 0.9], "ci_low": [0.3, 0.5, 0.5, 0.7, 0.8],
                         "ci_high": [0.5, 0.7, 0.7, 0.9, 0.95]})  # fmt: skip
    rows = rows.astype({"step": "Int64", "seed": "Int64"})
    xs, ys, vertices = band(rows)
    assert list(xs) == [10.0, 20.0] and ys == pytest.approx([0.6, 0.9])
    at = {x: sorted(vertices[vertices[:, 0] == x, 1]) for x in (10.0, 20.0)}
    sd = np.std([0.5, 0.7], ddof=1)
    assert (at[10.0][0], at[10.0][-1]) == pytest.approx((0.6 - sd, 0.6 + sd))
    # One seed at step 20: its bootstrap interval, as before.
    assert (at[20.0][0], at[20.0][-1]) == pytest.approx((0.8, 0.95))
    # A base model (no seed) is one seed too.
    _, ys, vertices = band(rows.assign(seed=pd.array([pd.NA] * 5, dtype="Int64")))
    assert ys == pytest.approx([0.6, 0.9]) and sorted(vertices[vertices[:, 0] == 10.0, 1])[0] == pytest.approx(0.5)


def test_learning_dynamics_panels_name_the_size_and_parent(tmp_path):
    from ptft import io

    io.write_json(tmp_path / "manifest.json", {"checkpoints": [{"name": "step10", "step": 10}]})
    runs = []
    for i, (size, parent) in enumerate(((100, None), (200, None), (None, "ft/step10/a/full/lr0.001/seed0"))):
        path = tmp_path / f"probes{i}.parquet"
        pd.DataFrame({"step": [0, 2, 0, 2], "example": 0, "response_type": ["gold"] * 2 + ["other_label"] * 2,
                      "logp": [-3.0, -2.0, -3.0, -4.0], "n_tokens": 2}).to_parquet(path)  # fmt: skip
        runs.append({"checkpoint": "step10", "task": "b", "method": "full", "lr": 1e-3, "seed": 0, "train_size": size,
                     "parent": parent, "path": str(path)})  # fmt: skip
    spec = {"runs": runs, "figures": ["learning_dynamics_b_full"]}
    ANALYSES["dynamics"].plot({"manifest": [str(tmp_path / "manifest.json")]}, SETTINGS, spec, tmp_path)
    texts = re.findall(r">([^<>]+)</text>", (tmp_path / "learning_dynamics_b_full.svg").read_text())
    # One lr and seed: not named; the sizes and the parent tell the panels apart.
    assert {"step10 · n=100", "step10 · n=200", "step10 · ← a (full)"} <= set(texts)
