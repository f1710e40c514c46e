"""The learning-dynamics table and figures: every probe run's probes.parquet, by response type name."""

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ptft import io, provenance
from ptft.aggregate.bootstrap import percentile_ci
from ptft.analysis import ANALYSES
from ptft.analysis.dynamics import DYNAMICS_COLUMNS, bootstrap_intervals, learning_dynamics_table, read_probe_runs
from ptft.analysis.registry import run_analysis

SETTINGS = {"figure_format": "default", "bootstrap": {"resamples": 500, "confidence": 0.9, "seed": 0}}
TYPES = ("chosen", "rejected", "argmax")
SFT = "ft/step10/toy_pref/full/lr0.001/seed0"


def probes(shift: float) -> pd.DataFrame:
    """Steps 0 and 2 of four examples: logp = shift + step - example (rejected: minus 2·step); argmax above both."""
    rows = []
    for step in (0, 2):
        for e in range(4):
            base = shift + step - e
            logp = {"chosen": base, "rejected": shift - 2 * step - e, "argmax": shift + 5 + step}
            rows += [(step, e, t, logp[t], 3 + e) for t in TYPES]
    return pd.DataFrame(rows, columns=["step", "example", "response_type", "logp", "n_tokens"])


@pytest.fixture
def setup(tmp_path):
    io.write_json(tmp_path / "manifest.json", {"checkpoints": [{"name": "step10", "step": 10, "tokens": 1000}]})
    runs = []
    frames = {"full": probes(-10.0), "dpo": probes(-20.0)}
    for method, frame in frames.items():
        path = tmp_path / method / "probes.parquet"
        path.parent.mkdir()
        # Rows in another order than written by name: the table must not depend on it.
        io.write_parquet(path, frame.sample(frac=1.0, random_state=1), {"checkpoints": [{"name": "step10"}]})
        parent = SFT if method == "dpo" else None
        run_id = f"{SFT}/then/toy_pref/dpo/lr0.001/seed0" if parent else SFT
        runs.append({"id": run_id, "checkpoint": "step10", "task": "toy_pref", "method": method, "lr": 1e-3,
                     "seed": 0, "train_size": None, "parent": parent, "path": str(path)})  # fmt: skip
    inputs = {"probes": [r["path"] for r in runs], "manifest": [str(tmp_path / "manifest.json")]}
    spec = {"study": "dyn", "runs": runs, "figures": ["learning_dynamics_toy_pref"]}
    return inputs, spec, frames


def test_the_table_of_two_runs_by_name(setup, tmp_path):
    inputs, spec, frames = setup
    out = tmp_path / "tables" / "learning_dynamics.parquet"
    run_analysis("dynamics", inputs, SETTINGS, spec, [str(out)], [])
    table = pd.read_parquet(out)
    assert list(table.columns) == list(DYNAMICS_COLUMNS) and len(table) == 2 * 2 * len(TYPES)
    assert set(table["study"]) == {"dyn"} and set(table["step"]) == {10} and set(table["tokens"]) == {1000}
    assert set(table["train_task"]) == {"toy_pref"} and set(table["lr"]) == {1e-3} and set(table["seed"]) == {0}
    assert table["train_size"].isna().all()
    by = {(m, s, t): row for m, s, t, row in zip(table["method"], table["ft_step"], table["response_type"],
                                                  table.itertuples(), strict=True)}  # fmt: skip
    for method, frame in frames.items():
        for step in (0, 2):
            for t in TYPES:
                row = by[method, step, t]
                values = frame[(frame["step"] == step) & (frame["response_type"] == t)]["logp"]
                assert row.mean == pytest.approx(values.mean(), abs=1e-12) and row.n == 4
                assert row.mean_tokens == pytest.approx(4.5)
                assert row.ci_low <= row.mean <= row.ci_high
                assert (row.ci_low < row.ci_high) == (t != "argmax")  # argmax is the same for every example
        assert by[method, 2, "chosen"].mean == by[method, 0, "chosen"].mean + 2
        assert by[method, 2, "rejected"].mean == by[method, 0, "rejected"].mean - 4
    assert by["dpo", 0, "chosen"].parent == SFT and pd.isna(by["full", 0, "chosen"].parent)
    # The table keeps where its rows come from: every run's probe file.
    assert provenance.read(out)["checkpoints"] == [{"name": "step10"}]


def test_the_intervals_are_the_performance_tables_bootstrap(setup):
    inputs, spec, _ = setup
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 37))
    low, high = bootstrap_intervals(values, 400, 0.95, 123)
    for k in range(5):
        assert (low[k], high[k]) == pytest.approx(percentile_ci(values[k], 400, 0.95, 123), abs=1e-12)
    # In blocks, as percentile_ci draws a large matrix.
    import ptft.aggregate.bootstrap as bootstrap

    limit = bootstrap.MAX_DRAW_ELEMENTS
    bootstrap.MAX_DRAW_ELEMENTS = 37 * 7
    try:
        blocked = bootstrap_intervals(values, 400, 0.95, 123)
        assert blocked[0][2] == pytest.approx(percentile_ci(values[2], 400, 0.95, 123)[0], abs=1e-12)
    finally:
        bootstrap.MAX_DRAW_ELEMENTS = limit
    assert [list(x) for x in bootstrap_intervals(values[:, :1], 10, 0.9, 0)] == [list(values[:, 0])] * 2
    # A run whose step lacks an example: its mean and n over the examples it has.
    table = learning_dynamics_table(read_probe_runs(inputs, spec), SETTINGS)
    frame = pd.read_parquet(spec["runs"][0]["path"])
    frame = frame.drop(frame[(frame["step"] == 2) & (frame["example"] == 0)].index)
    frame.to_parquet(spec["runs"][0]["path"])
    gappy = learning_dynamics_table(read_probe_runs(inputs, spec), SETTINGS)
    row = gappy[(gappy["method"] == "full") & (gappy["ft_step"] == 2) & (gappy["response_type"] == "chosen")]
    assert row["n"].item() == 3 and row["mean"].item() == pytest.approx(-8.0 - 2.0)
    kept = (gappy["ft_step"] == 0) | (gappy["method"] == "dpo")
    pd.testing.assert_frame_equal(gappy[kept].reset_index(drop=True), table[kept].reset_index(drop=True))


def test_a_probe_row_twice_is_an_error(setup):
    inputs, spec, frames = setup
    path = spec["runs"][1]["path"]
    pd.concat([frames["dpo"], frames["dpo"].iloc[:1]]).to_parquet(path)
    with pytest.raises(ValueError, match=f"{re.escape(path)} has more than one row of step 0, example 0"):
        learning_dynamics_table(read_probe_runs(inputs, spec), SETTINGS)


def test_the_figure_of_a_task_has_a_column_per_method_and_parent(setup, tmp_path):
    inputs, spec, _ = setup
    # A second seed of the SFT run: its line is the mean over seeds, its band their spread.
    second = dict(spec["runs"][0], id=SFT.replace("seed0", "seed1"), seed=1, path=str(tmp_path / "seed1.parquet"))
    probes(-12.0).to_parquet(second["path"])
    spec = {**spec, "runs": [*spec["runs"], second]}
    inputs = {**inputs, "probes": [*inputs["probes"], second["path"]]}
    out = tmp_path / "figures"
    out.mkdir()
    run_analysis("dynamics", inputs, SETTINGS, spec, [], [str(out / "learning_dynamics_toy_pref.png")])
    assert (out / "learning_dynamics_toy_pref.png").stat().st_size > 0
    texts = re.findall(r">([^<>]+)</text>", (out / "learning_dynamics_toy_pref.svg").read_text())
    assert {"full", "dpo ← full", "Learning dynamics: toy_pref", "fine-tuning step", *TYPES} <= set(texts)
    assert any(t.startswith("step10") for t in texts)
    assert plt.get_fignums() == []
    # The analysis: one figure per training task, the table from every run's probes.
    analysis = ANALYSES["dynamics"]
    assert analysis.built_here == ("learning_dynamics",) and analysis.table("learning_dynamics").source == "probes"
    assert "``random_sentence`` (an LLM-written random sentence" in analysis.table("learning_dynamics").caption
    assert "``argmax`` (y*" in analysis.figure_caption


def test_the_figure_draws_the_seed_spread(setup, tmp_path, monkeypatch):
    from ptft.aggregate import figures

    inputs, spec, _ = setup
    second = dict(spec["runs"][0], id=SFT.replace("seed0", "seed1"), seed=1, path=str(tmp_path / "seed1.parquet"))
    probes(-12.0).to_parquet(second["path"])
    table = learning_dynamics_table(read_probe_runs({**inputs, "probes": [*inputs["probes"], second["path"]]},
                                                    {**spec, "runs": [*spec["runs"], second]}), SETTINGS)  # fmt: skip
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig.axes))
    figures.plot_learning_dynamics_grid(table, "toy_pref", tmp_path / "x.png")
    full = next(ax for ax in drawn[0] if ax.get_title() == "full")
    chosen = next(line for line in full.lines if line.get_label() == "chosen")
    assert list(chosen.get_ydata()) == pytest.approx([np.mean([-11.5, -13.5]), np.mean([-9.5, -11.5])])
    band = full.collections[[line.get_label() for line in full.lines].index("chosen")].get_paths()[0].vertices
    sd = np.std([-11.5, -13.5], ddof=1)
    at0 = sorted(band[band[:, 0] == 0.0, 1])
    assert (at0[0], at0[-1]) == pytest.approx((-12.5 - sd, -12.5 + sd))
