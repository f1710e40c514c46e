"""The mechanistic study (Jain et al., ICLR 2024): does fine-tuning change a capability or wrap it?

Three tables from the ``mechanistic`` section's jobs (:mod:`ptft.interpret.stage`) and the trajectory
table, each with the run columns of the performance table:

- ``layer_probes``: per model, probe target and layer (0: the embeddings, l: after block l), the
  test accuracy of a linear probe on the residual stream at the answer position, with its
  percentile-bootstrap interval over the test examples and ``n``; ``chance`` is the accuracy of
  always answering the test set's most frequent class.
- ``pruning``: per fine-tuned model, ranking, K and eval set, the score with the top-K MLP neurons
  zeroed (ranked by weight × gradient of the pre-training task's loss: its magnitude, as Jain et al.,
  or the first-order decrease of the loss; K = 0 is the model as trained), with interval and
  ``n``; ``neurons`` lists the zeroed (block:neuron).
- ``reverse_finetuning``: the pre-training task's score along the trajectories of the reverse
  runs (``role`` reverse: a run started from a fine-tuned run) and of the baseline runs (``role``
  baseline: started from the checkpoint never pre-trained on the capability, the PCFG suite's
  ``scratch`` unless ``mechanistic.reverse.baseline_checkpoint`` names another), with
  ``steps_to_threshold``: a run's first snapshot step whose score reaches
  ``mechanistic.reverse.threshold`` (at or below it for a lower-is-better metric such as ``nll``;
  null where none does).

Figures: ``mechanistic_probes`` (probe accuracy against layer, a panel per target, a line per
model group), ``mechanistic_pruning`` (score against K, a panel per eval set) and
``mechanistic_reverse`` (score against reverse fine-tuning steps, reverse runs against baseline).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ptft.analysis.registry import Analysis, Table, register

RUN_KEYS = ["study", "checkpoint", "step", "tokens", "train_task", "method", "lr", "seed", "train_size", "parent",
            "ft_step"]  # fmt: skip
_DTYPES = {"step": "Int64", "tokens": "Int64", "seed": "Int64", "train_size": "Int64", "ft_step": "Int64",
           "lr": "float64", "value": "float64", "ci_low": "float64", "ci_high": "float64", "n": "Int64"}  # fmt: skip
PROBE_COLUMNS = [*RUN_KEYS, "dataset", "target", "layer", "value", "ci_low", "ci_high", "n", "chance"]
PRUNING_COLUMNS = [*RUN_KEYS, "ranking", "k", "eval_set", "format", "metric", "value", "ci_low", "ci_high", "n",
                   "neurons"]  # fmt: skip
REVERSE_COLUMNS = [*RUN_KEYS, "role", "eval_set", "metric", "value", "ci_low", "ci_high", "n", "threshold",
                   "steps_to_threshold"]  # fmt: skip

PROBES_CAPTION = (
    "Linear probes per layer (Jain et al. 2024): for each model, probe target and layer (0: the embeddings; l: the "
    "residual stream after block l, before any final norm), the accuracy on the dataset's eval split of a linear "
    "probe fitted with AdamW on its training split, reading the residual stream at the answer position (the "
    "prompt's last token). ``target`` names the record column the probe predicts, e.g. the pre-training answer "
    "(count of a) and the fine-tuning answer (count of b). ``ci_low``/``ci_high``: percentile bootstrap over the "
    "``n`` test examples; ``chance``: always answering the test split's most frequent class."
)
PRUNING_CAPTION = (
    "One-shot pruning (Jain et al. 2024): each fine-tuned model with its top-K MLP neurons zeroed. With D(n) = "
    "Σ_j W[j,n] · ∂L/∂W[j,n] over the out-projection weights of neuron n (L: the loss on the pruning dataset's "
    "training records; zeroing the neuron changes L by about −D(n)), ``ranking`` magnitude orders the neurons by "
    "|D(n)| (the paper's |weight × gradient|) and decrease by D(n) (only neurons whose removal should lower L). "
    "K = 0 is the model as trained. ``value``: the eval set's primary metric with its bootstrap interval over "
    "``n`` examples; ``neurons``: the zeroed block:neuron pairs."
)
REVERSE_CAPTION = (
    "Reverse fine-tuning (Jain et al. 2024): the pre-training task's score along fine-tuning of the reverse runs "
    "(``role`` reverse: started from a fine-tuned run, trained on the pre-training task) and of the baseline runs "
    "(``role`` baseline, scratch + FT: started from the checkpoint pre-trained on the fine-tuning task). "
    "``ft_step`` 0 is the model the run started from. ``steps_to_threshold``: the run's first snapshot step whose "
    "score reaches ``threshold`` (at or below it for a metric where lower is better; null: never within the run)."
)
FIGURE_CAPTION = (
    "The mechanistic study. ``mechanistic_probes``: linear-probe accuracy against layer, a panel per target, "
    "a line per (train task, checkpoint) averaged over seeds, the base checkpoints dashed. ``mechanistic_pruning``: "
    "score against the number of pruned neurons K, a panel per eval set, a line per (train task, lr), mean over "
    "seeds with its spread. ``mechanistic_reverse``: the pre-training task's score along reverse fine-tuning "
    "against the scratch + FT baseline, mean over seeds with its spread, the threshold dotted."
)


def _resampled(scores: np.ndarray, settings: dict) -> tuple[float, float]:
    from ptft.aggregate.bootstrap import percentile_ci

    boot = (settings or {}).get("bootstrap") or {}
    return percentile_ci(scores, boot.get("resamples", 3000), boot.get("confidence", 0.95), boot.get("seed", 0))


def _with_steps(table: pd.DataFrame, spec: dict, manifest: str) -> pd.DataFrame:
    from ptft import io

    checkpoints = {c["name"]: c for c in io.read_json(manifest)["checkpoints"]}
    return table.assign(
        study=spec.get("study"),
        step=[checkpoints.get(c, {}).get("step") for c in table["checkpoint"]],
        tokens=[checkpoints.get(c, {}).get("tokens") for c in table["checkpoint"]],
    )


def _read(key: str):
    def load(inputs: dict[str, list[str]], spec: dict) -> pd.DataFrame:
        parts = [pd.read_parquet(p) for p in inputs[key]]
        return _with_steps(pd.concat(parts, ignore_index=True), spec, inputs["manifest"][0])

    return load


def _run_groups(rows: pd.DataFrame, extra: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    keys = ["model", *extra]
    return list(rows.groupby(keys, sort=False, dropna=False))


def _first(group: pd.DataFrame) -> dict:
    return {k: group[k].iloc[0] if k in group else None for k in RUN_KEYS}


def layer_probes(rows: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """One row per (model, target, layer): probe accuracy, bootstrap interval, n and chance."""
    out = []
    for _, group in _run_groups(rows, ["target", "layer"]):
        correct = group["correct"].to_numpy(dtype=np.float64)
        low, high = _resampled(correct, settings)
        out.append({**_first(group), "dataset": group["dataset"].iloc[0], "target": group["target"].iloc[0],
                    "layer": int(group["layer"].iloc[0]), "value": correct.mean(), "ci_low": low, "ci_high": high,
                    "n": len(correct),
                    "chance": group["chance"].iloc[0] if "chance" in group else np.nan})  # fmt: skip
    table = pd.DataFrame(out, columns=PROBE_COLUMNS)
    return _ordered(table, ["target", "layer"]).astype(_DTYPES)


def chance_accuracy(test: pd.DataFrame, targets: dict[str, str]) -> dict[str, float]:
    """Per target, the share of the test records' most frequent class (records without an answer left out)."""
    shares = {}
    for name, column in targets.items():
        values = test[column][test[column] >= 0]
        shares[name] = float(values.value_counts(normalize=True).max()) if len(values) else np.nan
    return shares


def pruning(rows: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """One row per (model, K, eval set, format, metric): the score with the top-K neurons zeroed."""
    out = []
    for _, group in _run_groups(rows, ["ranking", "k", "eval_set", "format", "metric"]):
        scores = group["score"].to_numpy(dtype=np.float64)
        low, high = _resampled(scores, settings)
        out.append({**_first(group), "ranking": group["ranking"].iloc[0], "k": int(group["k"].iloc[0]),
                    "eval_set": group["eval_set"].iloc[0],
                    "format": group["format"].iloc[0], "metric": group["metric"].iloc[0], "value": scores.mean(),
                    "ci_low": low, "ci_high": high, "n": len(scores), "neurons": group["neurons"].iloc[0]})  # fmt: skip
    table = pd.DataFrame(out, columns=PRUNING_COLUMNS)
    return _ordered(table, ["ranking", "eval_set", "metric", "k"]).astype({**_DTYPES, "k": "Int64"})


def reverse_finetuning(trajectory: pd.DataFrame, settings: dict, reverse: dict, baseline_checkpoint: str
                       ) -> pd.DataFrame:  # fmt: skip
    """The reverse and baseline runs' primary-metric rows on ``reverse["eval_set"]``, with their steps to threshold.

    Baseline: the runs from ``baseline_checkpoint``; reverse: the runs started from another run on any other
    checkpoint. With ``reverse["tasks"]`` only runs of those training
    tasks count, and a baseline run may itself start from a run (a baseline that first learns the format);
    without it a baseline run starts from its checkpoint. The threshold is reached at or above it for a metric
    where higher is better, at or below it otherwise (``nll``).
    """
    from ptft.aggregate.figures import primary_metric_rows
    from ptft.evaluate.metrics import higher_is_better

    rows = primary_metric_rows(trajectory[trajectory["eval_set"] == reverse["eval_set"]])
    tasks = reverse.get("tasks")
    chosen = rows["train_task"].isin(tasks) if tasks else pd.Series(True, index=rows.index)
    on_baseline = rows["checkpoint"] == baseline_checkpoint
    is_reverse = chosen & ~on_baseline & rows["parent"].notna()
    is_baseline = chosen & on_baseline & (rows["parent"].isna() if not tasks else True)
    keep = is_reverse | is_baseline
    rows = rows[keep].assign(role=np.where(is_reverse[keep], "reverse", "baseline"))
    run = [k for k in ("checkpoint", "train_task", "method", "lr", "seed", "train_size", "parent", "format")
           if k in rows]  # fmt: skip
    # Per run, the smallest step whose value reaches the threshold (NA where none does).
    up = rows["metric"].map(higher_is_better).astype(bool)
    threshold = float(reverse["threshold"])
    hit = (up & (rows["value"] >= threshold)) | (~up & (rows["value"] <= threshold))
    reached = rows["ft_step"].astype("Float64").where(hit)
    steps = reached.groupby([rows[k] for k in run], dropna=False, sort=False).transform("min")
    rows = rows.assign(threshold=threshold, steps_to_threshold=steps.astype("Int64"))
    table = rows.reindex(columns=REVERSE_COLUMNS)
    return _ordered(table, ["role", "ft_step"]).astype(_DTYPES)


def _ordered(table: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    keys = [k for k in ("train_task", "checkpoint", "method", "lr", "seed", "parent", *extra) if k in table]
    return table.sort_values(keys, kind="mergesort", na_position="first").reset_index(drop=True)


def _block(plan, part: str) -> dict | None:
    return (getattr(plan, "mechanistic", None) or {}).get(part)


def _inputs(plan) -> dict[str, list[str]]:
    inputs = {"manifest": [plan.manifest_path]}
    if _block(plan, "layer_probes"):
        dataset = _block(plan, "layer_probes")["dataset"]
        inputs["layer_probes"] = [plan.layer_probes_path(m.id) for m in plan.probed_models]
        inputs["probe_test"] = [plan.data_path("eval", dataset)]
    if _block(plan, "pruning"):
        inputs["pruning"] = [plan.pruning_path(m.id) for m in plan.pruned_models]
    if _block(plan, "reverse"):
        inputs["trajectory"] = [plan.table_path("trajectory")]
    return inputs


def _spec(plan) -> dict:
    from ptft.plan import PCFG_BASELINE

    reverse = _block(plan, "reverse")
    return {"study": plan.study, "layer_probes": _block(plan, "layer_probes"), "reverse": reverse,
            "baseline_checkpoint": (reverse or {}).get("baseline_checkpoint") or PCFG_BASELINE}  # fmt: skip


def _build_probes(rows: pd.DataFrame, settings: dict) -> pd.DataFrame:
    return layer_probes(rows, settings)


def _tables() -> tuple[Table, ...]:
    return (
        Table("layer_probes", PROBES_CAPTION, _build_probes, applies=lambda p: bool(_block(p, "layer_probes")),
              source="layer_probes", load=_load_probe_rows),
        Table("pruning", PRUNING_CAPTION, pruning, applies=lambda p: bool(_block(p, "pruning")), source="pruning",
              load=_read("pruning")),
        Table("reverse_finetuning", REVERSE_CAPTION, _build_reverse, applies=lambda p: bool(_block(p, "reverse")),
              source="trajectory", load=_load_reverse),
    )  # fmt: skip


def _load_probe_rows(inputs: dict[str, list[str]], spec: dict) -> pd.DataFrame:
    """Every probed model's rows, each with its target's chance accuracy on the probed test records."""
    rows = _read("layer_probes")(inputs, spec)
    chance = chance_accuracy(pd.read_parquet(inputs["probe_test"][0]), spec["layer_probes"]["targets"])
    return rows.assign(chance=rows["target"].map(chance).astype("float64"))


def _load_reverse(inputs: dict[str, list[str]], spec: dict) -> pd.DataFrame:
    rows = pd.read_parquet(inputs["trajectory"][0])
    rows.attrs["reverse"], rows.attrs["baseline"] = spec["reverse"], spec["baseline_checkpoint"]
    return rows


def _build_reverse(trajectory: pd.DataFrame, settings: dict) -> pd.DataFrame:
    return reverse_finetuning(trajectory, settings, trajectory.attrs["reverse"], trajectory.attrs["baseline"])


def _figures(plan) -> list[str]:
    names = {"layer_probes": "mechanistic_probes", "pruning": "mechanistic_pruning", "reverse": "mechanistic_reverse"}
    return [name for part, name in names.items() if _block(plan, part)]


def _plot(inputs, settings, spec, out) -> None:
    from ptft.aggregate import figures

    for name in spec["figures"]:
        if name == "mechanistic_probes":
            figures.plot_layer_probes(_build_probes(_load_probe_rows(inputs, spec), settings), out / f"{name}.png")
        elif name == "mechanistic_pruning":
            figures.plot_pruning(pruning(_read("pruning")(inputs, spec), settings), out / f"{name}.png")
        elif name == "mechanistic_reverse":
            figures.plot_reverse(_build_reverse(_load_reverse(inputs, spec), settings), out / f"{name}.png")
        else:
            raise ValueError(f"analysis 'mechanistic': unknown figure {name!r}")


register(
    Analysis(
        name="mechanistic",
        category="Mechanistic effects of fine-tuning",
        tables=_tables(),
        figure_caption=FIGURE_CAPTION,
        figures=_figures,
        plot=_plot,
        applies=lambda plan: bool(getattr(plan, "mechanistic", None)),
        inputs=_inputs,
        spec=_spec,
    )
)
