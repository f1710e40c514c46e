"""Learning dynamics during fine-tuning (Ren & Sutherland 2025): the probes' log-probabilities along training.

Every probe run writes ``probes.parquet``: at step 0, every ``probes.every`` optimizer steps and
after the last, the summed log-probability (``logp``, over ``n_tokens`` response tokens) of each
(probe example, response type) (:mod:`ptft.finetune.probes`). This analysis makes of them

- the table ``learning_dynamics`` (:func:`learning_dynamics_table`): one row per run, probe step
  (``ft_step``) and response type, the mean over the probe examples with a seeded percentile
  bootstrap interval over examples (the performance table's :func:`ptft.aggregate.bootstrap.percentile_ci`,
  its draws shared by the steps of a run's response type, :func:`bootstrap_intervals`), keyed by
  the response type's name;
- per training task the figure ``learning_dynamics_<task>``
  (:func:`ptft.aggregate.figures.plot_learning_dynamics_grid`): a row of panels per pre-training
  checkpoint, a column per (method, parent) group ("full", "extend", "dpo ← full"), one line per
  response type (its colour the same in every panel), seeds averaged with their spread as the
  band, else the bootstrap interval.

A plan of earlier figure names (``learning_dynamics_<task>_<method>``, a panel per run) is still drawn
(:func:`ptft.aggregate.figures.plot_learning_dynamics`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ptft.analysis.registry import Analysis, Table, register
from ptft.analysis.runs import parent_config, parent_label

DYNAMICS_COLUMNS = ("study", "checkpoint", "step", "tokens", "train_task", "method", "lr", "seed", "train_size",
                    "parent", "ft_step", "response_type", "mean", "ci_low", "ci_high", "n", "mean_tokens")  # fmt: skip
RUN_COLUMNS = ["study", "checkpoint", "step", "tokens", "train_task", "method", "lr", "seed", "train_size", "parent"]
_DTYPES = {"study": "object", "checkpoint": "object", "step": "Int64", "tokens": "Int64", "train_task": "object",
           "method": "object", "lr": "float64", "seed": "Int64", "train_size": "Int64", "parent": "object",
           "ft_step": "Int64", "response_type": "object", "mean": "float64", "ci_low": "float64",
           "ci_high": "float64", "n": "int64", "mean_tokens": "float64"}  # fmt: skip
DEFAULT_BOOTSTRAP = {"resamples": 3000, "confidence": 0.95, "seed": 0}

RESPONSE_TYPES_CAPTION = (
    "Response types (Ren & Sutherland's, built by ``ptft build-probes``): ``chosen`` (y+, the dataset's "
    "chosen response), ``rejected`` (y-, its rejected response), ``initial`` (a response sampled from a fixed "
    "model, the same text for every trained model), ``chosen_semantic`` / ``rejected_semantic`` (an LLM rewrite "
    "in other words with the same meaning), ``chosen_format`` / ``rejected_format`` (an LLM rewrite that keeps "
    "the format and changes the meaning), ``irrelevant_train`` (the chosen response of another probe prompt), "
    "``irrelevant_test`` (the chosen response of a test-split prompt), ``random_sentence`` (an LLM-written random "
    "sentence with as many words as the chosen response), ``shuffled_chosen`` (the chosen response's words "
    "shuffled), ``shuffled_test`` (the irrelevant test response's words shuffled) and ``argmax`` (y*: at each "
    "teacher-forced position of the chosen response the log-probability of the most likely token, summed; "
    "computed by the prober). The built-in probe set's: ``gold`` (the example's own completion), "
    "``other_label`` (a wrong label, classification), ``shuffled_gold`` (its words shuffled, generation) and "
    "``other_response`` (another example's completion)."
)
TABLE_CAPTION = (
    "Learning dynamics during fine-tuning (Ren & Sutherland 2025): one row per probe run, probe step and "
    "response type. ``ft_step`` is the optimizer step the run was probed at (0: before its first update); "
    "``mean`` is the summed log-probability of the response given its prompt (prompt masked; EOS included "
    "where the study's probes score it), averaged over the ``n`` probe examples, with ``ci_low``/``ci_high`` "
    "its seeded percentile bootstrap interval over the examples (``aggregate.bootstrap``; the draws are shared "
    "by the steps of a run's response type); ``mean_tokens`` is the mean number of scored tokens. A run is its "
    "pre-training ``checkpoint`` (``step``, ``tokens``), ``train_task``, ``method``, ``lr``, ``seed``, "
    "``train_size`` and ``parent`` (the model id of the run it started from, e.g. DPO from an SFT run). "
    + RESPONSE_TYPES_CAPTION
    + " Defined in ``ptft.analysis.dynamics``."
)
FIGURE_CAPTION = (
    "Learning dynamics during fine-tuning (Ren & Sutherland 2025). ``learning_dynamics_<task>``: the summed "
    "log-probability of each probe response type given its prompt, averaged over the probe examples, against "
    "the fine-tuning step (0: before the first update); a row of panels per pre-training checkpoint, a column "
    "per method and the run it started from (e.g. ``full``: SFT; ``extend``: SFT on chosen and rejected; "
    "``dpo ← full``: DPO from the SFT model), where runs also differ in train size (n=…) or lr the column names "
    "them. A response type has one colour and line style in every panel. Lines average the seeds; the band is "
    "± one standard deviation over seeds where there are several, else the 95 % bootstrap interval over the "
    "examples. Chosen rising while rejected falls is the model learning the preference; everything falling "
    "while argmax rises is the squeezing effect of a negative gradient (DPO). " + RESPONSE_TYPES_CAPTION
)
_PREFIX = "learning_dynamics_"


def _parent_id(model) -> str | None:
    # getattr: plans before runs from runs have no parent; a parent is a model of the plan.
    parent = getattr(model, "parent", None)
    return None if parent is None else getattr(parent, "id", str(parent))


def _runs(plan) -> list[dict]:
    return [{"id": m.id, "checkpoint": m.checkpoint, "task": m.train_task, "method": m.method, "lr": m.lr,
             "seed": m.seed, "train_size": getattr(m, "train_size", None), "parent": _parent_id(m),
             "path": plan.probes_path(m)}
            for m in plan.probe_runs]  # fmt: skip


# -- the table


def read_probe_runs(inputs: dict[str, list[str]], spec: dict) -> pd.DataFrame:
    """The probe runs of the spec, one row each: the run's columns of :data:`RUN_COLUMNS`, its ``id`` and its
    ``probes.parquet`` (``path``); the pre-training ``step`` and ``tokens`` from the checkpoint manifest."""
    from ptft import io

    runs = pd.DataFrame(spec["runs"])
    for column in ("id", "train_size", "parent"):  # a spec of a plan before these
        if column not in runs:
            runs[column] = None
    runs["id"] = [i if isinstance(i, str) else p for i, p in zip(runs["id"], runs["path"], strict=True)]
    listed = set(inputs.get("probes", runs["path"]))
    missing = [p for p in runs["path"] if p not in listed]
    if missing:
        raise ValueError(f"learning_dynamics: the spec's probe files {missing[:3]} are not among the inputs")
    manifest = inputs.get("manifest")
    checkpoints = {c["name"]: c for c in io.read_json(manifest[0])["checkpoints"]} if manifest else {}
    runs["step"] = [checkpoints.get(c, {}).get("step") for c in runs["checkpoint"]]
    runs["tokens"] = [checkpoints.get(c, {}).get("tokens") for c in runs["checkpoint"]]
    runs["study"] = spec.get("study")
    runs = runs.rename(columns={"task": "train_task"})
    return runs[[*RUN_COLUMNS, "id", "path"]]


def bootstrap_intervals(values: np.ndarray, resamples: int, confidence: float, seed: int) -> tuple:
    """(low, high) arrays: for each row of ``values`` (steps × examples), what
    :func:`ptft.aggregate.bootstrap.percentile_ci` of that row with ``seed`` gives (up to float rounding).

    The resampled examples of one seed are the same for every row, so they are drawn once: as counts per
    example (the same index blocks ``percentile_ci`` draws), and each resample's mean is a product.
    """
    from ptft.aggregate.bootstrap import MAX_DRAW_ELEMENTS, check_settings

    values = np.asarray(values, dtype=np.float64)
    rows, n = values.shape
    if n == 0:
        return np.full(rows, np.nan), np.full(rows, np.nan)
    if n == 1:
        return values[:, 0].copy(), values[:, 0].copy()
    check_settings(resamples, confidence)
    rng = np.random.default_rng(seed)
    block = max(1, MAX_DRAW_ELEMENTS // n)
    means = np.empty((rows, resamples), dtype=np.float64)
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        counts = np.bincount((np.arange(size)[:, None] * n + idx).ravel(), minlength=size * n).reshape(size, n)
        means[:, start : start + size] = values @ counts.T.astype(np.float64) / n
    q = [100.0 * (1.0 - confidence) / 2.0, 100.0 * (1.0 + confidence) / 2.0]
    low, high = np.percentile(means, q, axis=1)
    return low, high


def _run_rows(run, probes: pd.DataFrame, bootstrap: dict) -> list[dict]:
    from ptft.aggregate.bootstrap import percentile_ci
    from ptft.aggregate.performance import row_seed

    dup = probes[probes.duplicated(["step", "example", "response_type"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        raise ValueError(f"learning_dynamics: {run.path} has more than one row of step {first['step']}, example "
                         f"{first['example']}, response type {first['response_type']!r}")  # fmt: skip
    out = []
    for response_type, rows in probes.groupby("response_type", sort=True):
        logp = rows.pivot(index="step", columns="example", values="logp").sort_index()
        tokens = rows.groupby("step", sort=True)["n_tokens"].mean()
        seed = row_seed(bootstrap["seed"], run.id, "probes", "logp", str(response_type))
        values = logp.to_numpy(dtype=np.float64)
        complete = ~np.isnan(values).any(axis=1)
        low, high = np.full(len(values), np.nan), np.full(len(values), np.nan)
        if complete.any():
            low[complete], high[complete] = bootstrap_intervals(values[complete], bootstrap["resamples"],
                                                                bootstrap["confidence"], seed)  # fmt: skip
        for k in np.flatnonzero(~complete):  # a step that lacks some examples: its own draws
            row = values[k][~np.isnan(values[k])]
            low[k], high[k] = percentile_ci(row, bootstrap["resamples"], bootstrap["confidence"], seed)
        n = (~np.isnan(values)).sum(axis=1)
        means = np.nanmean(values, axis=1) if values.shape[1] else np.full(len(values), np.nan)
        for k, step in enumerate(logp.index):
            out.append({**{c: getattr(run, c) for c in RUN_COLUMNS}, "ft_step": int(step),
                        "response_type": str(response_type), "mean": float(means[k]), "ci_low": float(low[k]),
                        "ci_high": float(high[k]), "n": int(n[k]), "mean_tokens": float(tokens[step])})  # fmt: skip
    return out


def learning_dynamics_table(runs: pd.DataFrame, settings: dict | None = None) -> pd.DataFrame:
    """The table ``learning_dynamics`` of the probe runs ``runs`` (:func:`read_probe_runs`: their columns,
    ``id`` and ``path``), in :data:`DYNAMICS_COLUMNS`; ``settings``: the ``aggregate`` section (its ``bootstrap``)."""
    bootstrap = {**DEFAULT_BOOTSTRAP, **((settings or {}).get("bootstrap") or {})}
    rows = []
    for run in runs.itertuples(index=False):
        probes = pd.read_parquet(run.path)
        missing = [c for c in ("step", "example", "response_type", "logp", "n_tokens") if c not in probes]
        if missing:
            raise ValueError(f"learning_dynamics: {run.path} lacks the column(s) {missing}")
        rows += _run_rows(run, probes, bootstrap)
    table = pd.DataFrame(rows, columns=list(DYNAMICS_COLUMNS))
    table["parent"] = [None if p is None or pd.isna(p) else str(p) for p in table["parent"]]
    table = table.astype(_DTYPES)
    order = ["train_task", "method", "parent", "train_size", "step", "checkpoint", "lr", "seed", "ft_step",
             "response_type"]  # fmt: skip
    return table.sort_values(order, na_position="first", kind="mergesort").reset_index(drop=True)


_CACHE: dict = {}  # the table of the last runs: the job's figures reuse what its table computed


def _cached_table(runs: pd.DataFrame, settings: dict) -> pd.DataFrame:
    import json
    import os

    stamps = [os.stat(p).st_mtime_ns for p in runs["path"]]
    key = json.dumps([runs.to_dict("records"), stamps, (settings or {}).get("bootstrap")], default=str)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = learning_dynamics_table(runs, settings)
    return _CACHE[key]


def _build(runs: pd.DataFrame, settings: dict) -> pd.DataFrame:
    return _cached_table(runs, settings).copy()


def _load(inputs: dict, spec: dict) -> pd.DataFrame:
    return read_probe_runs(inputs, spec)


# -- the figures


def _figures(plan) -> list[str]:
    return [f"{_PREFIX}{t}" for t in sorted({m.train_task for m in plan.probe_runs})]


def _panel(run, several: set[str]) -> str:
    """A run's panel title in a figure of a task and method: its checkpoint, and what tells it apart."""
    parts = [run.checkpoint]
    if "lr" in several:
        parts.append(f"lr {run.lr:g}")
    if "seed" in several:
        parts.append(f"seed {run.seed}")
    if "train_size" in several and pd.notna(run.train_size):
        parts.append(f"n={int(run.train_size)}")
    if "parent" in several and isinstance(run.parent, str):
        parts.append(f"← {parent_label(run.parent)}")
    return " · ".join(parts)


def _plot_task_method(runs: pd.DataFrame, steps: dict, task: str, method: str, out) -> None:
    """The earlier figure ``learning_dynamics_<task>_<method>``: a panel per run."""
    from ptft.aggregate import figures

    group = runs[(runs["task"] == task) & (runs["method"] == method)]
    # A child run's parent differs with its checkpoint and seed: the parent's configuration is what varies.
    axes = group.assign(parent=[parent_config(p) for p in group["parent"]])
    varying = {c for c in ("lr", "seed", "train_size", "parent") if axes[c].nunique(dropna=False) > 1}
    # lr and seed are named together, as before the other axes: a panel says which run of the grid it is.
    several = varying | ({"lr", "seed"} if varying & {"lr", "seed"} else set())
    group = group.assign(order=group["checkpoint"].map(steps))
    group = group.sort_values(["order", "train_size", "parent", "lr", "seed"], kind="mergesort")
    parts = [pd.read_parquet(run.path).assign(panel=_panel(run, several)) for run in group.itertuples()]
    path = out / f"{_PREFIX}{task}_{method}.png"
    figures.plot_learning_dynamics(pd.concat(parts), f"Learning dynamics: {task} ({method})", path)


def _plot(inputs, settings, spec, out) -> None:
    from ptft import io
    from ptft.aggregate import figures

    runs = pd.DataFrame(spec["runs"])
    for column in ("train_size", "parent"):  # a spec of a plan before these axes
        if column not in runs:
            runs[column] = None
    tasks = set(runs["task"])
    legacy = {
        f"{_PREFIX}{t}_{m}": (t, m) for t, m in runs[["task", "method"]].drop_duplicates().itertuples(index=False)
    }
    for name in spec["figures"]:
        task = name[len(_PREFIX) :]
        if task in tasks:
            table = _cached_table(read_probe_runs(inputs, spec), settings)
            figures.plot_learning_dynamics_grid(table[table["train_task"] == task], task, out / f"{name}.png")
        elif name in legacy:
            steps = {e["name"]: e.get("step") for e in io.read_json(inputs["manifest"][0])["checkpoints"]}
            _plot_task_method(runs, steps, *legacy[name], out)
        else:
            raise ValueError(f"analysis 'dynamics': no probe run of figure {name!r} (tasks {sorted(tasks)})")


register(
    Analysis(
        name="dynamics",
        category="Learning dynamics",
        tables=(Table("learning_dynamics", TABLE_CAPTION, _build, source="probes", load=_load),),
        figure_caption=FIGURE_CAPTION,
        figures=_figures,
        plot=_plot,
        applies=lambda plan: bool(plan.probe_runs),
        inputs=lambda plan: {"probes": [r["path"] for r in _runs(plan)], "manifest": [plan.manifest_path]},
        spec=lambda plan: {"study": plan.study, "runs": _runs(plan)},
    )
)
