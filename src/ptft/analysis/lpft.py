"""The LP-FT study (Tomihari & Sato 2024): calibration and feature change of fine-tuned classifiers.

Every fine-tuned classifier (a run on a declared classification dataset) is measured per eval set
by ``ptft measure-classifier`` (:mod:`ptft.evaluate.classifier_measures`, where each quantity is
defined). This analysis makes of those files

- the tables ``calibration`` (temperature, ECE, MCE, Brier score, NLL and accuracy before and
  after temperature scaling) and ``features`` (feature change and cosine similarity, feature,
  logit and head norms), one row per (run, eval set, quantity) with the performance table's run
  columns, the quantity in ``metric`` and its ``value``;
- their summaries over seeds, ``calibration_seeds`` and ``features_seeds``
  (:func:`ptft.analysis.seeds.seed_summary`: mean, standard deviation and Student-t interval);
- the figures ``lpft_accuracy`` (test accuracy per method and eval set, mean over seeds with their
  spread, from the performance table), ``lpft_features`` (feature change against the head's norm
  at the start of training, a point per run) and ``lpft_reliability_<eval set>`` (reliability
  diagrams before and after temperature scaling, a panel per method).
"""

from __future__ import annotations

import pandas as pd

from ptft.analysis.registry import Analysis, Table, register

# The quantities of ptft.evaluate.classifier_measures, by table (their definitions are there).
FEATURE_QUANTITIES = ("feature_change", "feature_norm", "feature_norm_start", "feature_cosine",
                      "feature_cosine_start", "logit_norm", "head_norm", "head_norm_start")  # fmt: skip
CALIBRATION_QUANTITIES = ("temperature", *(f"{q}_{when}" for q in ("ece", "mce", "brier", "nll", "accuracy")
                                           for when in ("before", "after")))  # fmt: skip
RUN_KEYS = ["study", "checkpoint", "step", "tokens", "train_task", "method", "lr", "seed", "train_size", "parent",
            "ft_step", "lr_selected", "eval_set", "eval_task", "format", "shots", "relation", "metric", "value",
            "n"]  # fmt: skip
_DTYPES = {"step": "Int64", "tokens": "Int64", "seed": "Int64", "train_size": "Int64", "ft_step": "Int64",
           "lr": "float64", "value": "float64", "n": "Int64", "shots": "Int64"}  # fmt: skip
CALIBRATION_CAPTION = (
    "Calibration of the fine-tuned classifiers (the LP-FT study, Tomihari & Sato 2024): one row per run, eval set "
    "and quantity (``metric``). ``temperature``: one temperature fitted on the NLL of the run's validation split; "
    "``ece``/``mce``: expected/maximum calibration error with 15 equal-width bins on the max probability "
    "(``ptft.evaluate.calibration``: bin b/B < c <= (b+1)/B, the first bin closed at 0); ``brier``: mean over "
    "examples of the sum over classes of (p - 1[gold])^2; ``nll``: mean negative log-likelihood of the gold class; "
    "``accuracy``; each ``_before`` and ``_after`` temperature scaling (which leaves accuracy unchanged). "
    "Fractions, not percent. Defined in ``ptft.evaluate.classifier_measures``."
)
FEATURES_CAPTION = (
    "Feature change of the fine-tuned classifiers (the LP-FT study): one row per run, eval set and quantity. "
    "Features are the head's input (the first token's last hidden state for RoBERTa's linear head, the last "
    "non-padding token's for a decoder), in eval mode; the start features are those of the run's starting model. "
    "``feature_change`` (Diff(F)): mean over the set's examples of ||f(x) - f0(x)||; ``feature_norm`` / "
    "``feature_norm_start``: mean ||f(x)|| / ||f0(x)||; ``feature_cosine`` / ``feature_cosine_start`` (CS(F)): mean "
    "cosine similarity over pairs of distinct examples; ``logit_norm``: mean ||z(x)||; ``head_norm``: Frobenius norm "
    "of the head's weight after training; ``head_norm_start``: the same when training began (after linear probing "
    "for lp, lpft and lp_lora, the random head for full and lora). Defined in ``ptft.evaluate.classifier_measures``."
)
SEEDS_CAPTION = (
    "{what} summarised over fine-tuning seeds (``ptft.analysis.seeds.seed_summary``): per run without its seed, "
    "eval set and quantity, ``value_mean``, ``value_std`` (ddof 1), a Student-t interval of the mean "
    "(``ci_low``/``ci_high``) and ``n_seeds``."
)
FIGURE_CAPTION = (
    "The LP-FT study. ``lpft_accuracy``: test accuracy (Matthews correlation for CoLA-like sets) per method and "
    "eval set, mean over seeds with ± one standard deviation. ``lpft_features``: feature change (mean ||f - f0|| "
    "over the eval set) against the head's Frobenius norm when training began, a point per run and eval set: "
    "the paper's finding is that a larger head norm (after LP) comes with a smaller feature change. "
    "``lpft_reliability_<eval set>``: reliability diagrams (accuracy against mean confidence per bin of 15) "
    "before and after temperature scaling, a panel per method, seeds pooled."
)


def _runs(plan) -> list[dict]:
    return [{"model": m.id, "measures": plan.classifier_measures_path(m.id), "reliability": plan.reliability_path(m.id)}
            for m in plan.classifier_runs]  # fmt: skip


def read_measures(inputs: dict[str, list[str]], spec: dict) -> pd.DataFrame:
    """Every classifier's quantities, with the pre-training ``step``/``tokens`` from the manifest."""
    from ptft import io

    parts = [pd.read_parquet(p) for p in inputs["measures"]]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=RUN_KEYS)
    checkpoints = {c["name"]: c for c in io.read_json(inputs["manifest"][0])["checkpoints"]}
    table["step"] = [checkpoints.get(c, {}).get("step") for c in table["checkpoint"]]
    table["tokens"] = [checkpoints.get(c, {}).get("tokens") for c in table["checkpoint"]]
    table["study"] = spec.get("study")
    table["lr_selected"] = pd.array([pd.NA] * len(table), dtype="boolean")
    return table


def _table(quantities: tuple[str, ...]):
    def build(measures: pd.DataFrame, _settings: dict) -> pd.DataFrame:
        rows = measures[measures["metric"].isin(quantities)]
        rows = rows.assign(parent=rows["parent"].astype("object"))
        order = {q: i for i, q in enumerate(quantities)}
        rows = rows.sort_values(["method", "train_task", "checkpoint", "lr", "seed", "eval_set", "metric"],
                                key=lambda c: c.map(order) if c.name == "metric" else c, kind="mergesort")  # fmt: skip
        return rows[RUN_KEYS].astype(_DTYPES).reset_index(drop=True)

    return build


def _seeds(quantities: tuple[str, ...]):
    def build(measures: pd.DataFrame, settings: dict) -> pd.DataFrame:
        from ptft.analysis.seeds import seed_summary

        return seed_summary(_table(quantities)(measures, settings), settings)

    return build


def _figures(plan) -> list[str]:
    if not plan.classifier_runs:
        return []
    sets = dict.fromkeys(e for m in plan.classifier_runs for e in m.eval_sets)
    return ["lpft_accuracy", "lpft_features", *(f"lpft_reliability_{e}" for e in sets)]


def _plot(inputs, settings, spec, out) -> None:
    from ptft.aggregate import figures

    measures = _table(FEATURE_QUANTITIES)(read_measures(inputs, spec), settings)
    for name in spec["figures"]:
        if name == "lpft_accuracy":
            perf = pd.read_parquet(inputs["performance"][0])
            perf = perf[perf["train_task"].isin(spec["tasks"]) & (perf["method"] != "base")]
            figures.plot_method_accuracy(perf, out / f"{name}.png")
        elif name == "lpft_features":
            figures.plot_feature_change(measures, out / f"{name}.png")
        elif name.startswith("lpft_reliability_"):
            eval_set = name[len("lpft_reliability_") :]
            bins = pd.concat([pd.read_parquet(p) for p in inputs["reliability"]], ignore_index=True)
            figures.plot_reliability(bins[bins["eval_set"] == eval_set], eval_set, out / f"{name}.png")
        else:
            raise ValueError(f"analysis 'lpft': unknown figure {name!r}")


def _applies(plan) -> bool:
    return bool(plan.classifier_runs)


def _inputs(plan) -> dict[str, list[str]]:
    runs = _runs(plan)
    return {"measures": [r["measures"] for r in runs], "reliability": [r["reliability"] for r in runs],
            "manifest": [plan.manifest_path], "performance": [plan.table_path("performance")]}  # fmt: skip


def _spec(plan) -> dict:
    return {"study": plan.study, "tasks": sorted({m.train_task for m in plan.classifier_runs})}


def _tables():
    return (
        Table("calibration", CALIBRATION_CAPTION, _table(CALIBRATION_QUANTITIES), source="measures",
              load=read_measures),
        Table("features", FEATURES_CAPTION, _table(FEATURE_QUANTITIES), source="measures", load=read_measures),
        Table("calibration_seeds", SEEDS_CAPTION.format(what="The calibration table"),
              _seeds(CALIBRATION_QUANTITIES), source="measures", load=read_measures),
        Table("features_seeds", SEEDS_CAPTION.format(what="The features table"), _seeds(FEATURE_QUANTITIES),
              source="measures", load=read_measures),
    )  # fmt: skip


register(
    Analysis(
        name="lpft",
        category="Linear probing then fine-tuning",
        tables=_tables(),
        figure_caption=FIGURE_CAPTION,
        figures=_figures,
        plot=_plot,
        applies=_applies,
        inputs=_inputs,
        spec=_spec,
    )
)
