"""The performance table: one row per (model, eval set, format, metric), the public contract.

Columns and meaning are specified in docs/architecture.md ("The result tables"). Each row is the mean of the
per-example scores of one model on one eval set in one prompt format, with a seeded percentile
bootstrap interval (see :func:`ptft.aggregate.bootstrap.percentile_ci`); for a corpus-level metric
(``aggregation="corpus"`` in :mod:`ptft.evaluate.metrics`, e.g. ``mcc``) it is the metric's corpus
function of all the examples' predicted and gold labels, with the same bootstrap over examples
(:func:`corpus_ci`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from ptft.aggregate.bootstrap import percentile_ci, resampled_ci
from ptft.data.tasks import FORMATS
from ptft.evaluate.metrics import get_metric
from ptft.plan import BASE, RELATIONS

PERFORMANCE_COLUMNS = (
    "study",
    "checkpoint",
    "step",
    "tokens",
    "train_task",
    "method",
    "lr",
    "seed",
    "train_size",
    "parent",
    "ft_step",
    "lr_selected",
    "eval_set",
    "eval_task",
    "format",
    "shots",
    "relation",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "diff_ci_low",
    "diff_ci_high",
)

METHODS = (BASE, "full", "lora", "lpft", "instruct")

# What one row of the table is about; every other predictions column must be constant within it.
GROUP_KEYS = ["model", "eval_set", "format", "metric"]
META_COLUMNS = ["checkpoint", "train_task", "method", "lr", "seed", "train_size", "parent", "ft_step", "shots",
                "eval_task", "relation"]  # fmt: skip
REQUIRED_PREDICTION_COLUMNS = (*GROUP_KEYS, *META_COLUMNS, "example_id", "score")
# A corpus-level metric is computed from the label strings, not from "score"; required where one is present.
LABEL_COLUMNS = ("prediction", "gold")
# lr and seed are null for base models, train_size without a size sweep, parent for a run from a
# checkpoint; nothing else may be.
NULLABLE_PREDICTION_COLUMNS = ("lr", "seed", "train_size", "parent", "ft_step")
# Predictions written before these axes existed: a model of one size, from its checkpoint, step unknown.
AXIS_DEFAULTS = {"train_size": pd.NA, "parent": pd.NA, "ft_step": pd.NA}

_DTYPES = {
    "study": "str",
    "checkpoint": "str",
    "step": "Int64",
    "tokens": "Int64",
    "train_task": "str",
    "method": "str",
    "lr": "float64",
    "seed": "Int64",
    "train_size": "Int64",
    "parent": "string",
    "ft_step": "Int64",
    "lr_selected": "boolean",
    "eval_set": "str",
    "eval_task": "str",
    "format": "str",
    "shots": "int64",
    "relation": "str",
    "metric": "str",
    "value": "float64",
    "ci_low": "float64",
    "ci_high": "float64",
    "n": "int64",
    "diff_ci_low": "float64",
    "diff_ci_high": "float64",
}
_SORT_COLUMNS = ["method", "train_task", "parent", "train_size", "step", "checkpoint", "lr", "seed", "ft_step",
                 "eval_set", "format", "metric"]  # fmt: skip


def read_predictions(paths: Iterable) -> pd.DataFrame:
    """Concatenate per-example prediction Parquet files into one DataFrame."""
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        raise ValueError("read_predictions: no prediction files given")
    return pd.concat(frames, ignore_index=True)


def row_seed(seed: int, model: str, eval_set: str, format: str, metric: str, *extra: str) -> int:
    """Bootstrap seed of one table row: CRC-32 of ``"seed|model|eval_set|format|metric"``
    (``|`` and any ``extra`` parts appended, e.g. ``"paired"`` for the paired interval).

    Deriving it from the row's key (not from a shared generator) makes every row reproducible
    on its own, whatever other models are in the table.
    """
    return zlib.crc32("|".join([str(seed), model, eval_set, format, metric, *extra]).encode("utf-8"))


def performance_table(
    predictions: pd.DataFrame,
    manifest: dict,
    study: str,
    resamples: int,
    confidence: float,
    seed: int,
    selections: list[dict] | None = None,
) -> pd.DataFrame:
    """Aggregate per-example predictions into the performance table.

    One row per (model, eval_set, format, metric): ``value`` is the mean of ``score``, ``n`` the
    number of examples, ``ci_low``/``ci_high`` the percentile bootstrap interval of the mean
    (``resamples`` resamples at level ``confidence``, seeded per row by :func:`row_seed`).
    For a fine-tuned row, ``diff_ci_low``/``diff_ci_high`` is the paired bootstrap interval of
    its change over the base row of the same checkpoint, eval set, format and metric
    (:func:`paired_diff_ci`, seeded by the row's key plus ``"paired"``); null for base rows and
    where no base row exists.
    For a metric whose aggregation is ``"corpus"`` (:func:`ptft.evaluate.metrics.get_metric`),
    ``score`` is ignored: ``value`` is the metric's corpus function of all the examples'
    ``prediction`` and ``gold`` strings, and the intervals are :func:`corpus_ci` and
    :func:`paired_corpus_diff_ci` with the same seeds, resamples and confidence.
    ``step`` and ``tokens`` come from ``manifest["checkpoints"]`` by checkpoint name (null when the
    checkpoint or the field is missing). ``lr_selected`` marks the fine-tuned run whose lr was
    chosen on validation (``selections``, from ``ptft.finetune.select``) true and the other runs
    of its grid false; it is null for base models and for studies without an lr selection.
    Columns are in :data:`PERFORMANCE_COLUMNS` order; rows
    are sorted by method, train_task, step, checkpoint, lr, seed, eval_set, format, metric.

    Raises ``ValueError`` if a required column is missing, a metric is not registered, a
    non-nullable column has nulls, a score is missing, an example appears twice in a group, the
    metadata (checkpoint, method, relation, …) of one group is not constant, or rows of a
    corpus-level metric lack ``prediction`` or ``gold`` (the column or a value).
    """
    predictions = predictions.assign(**{c: v for c, v in AXIS_DEFAULTS.items() if c not in predictions.columns})
    if predictions["ft_step"].isna().any():  # a pre-training checkpoint has had no fine-tuning step
        predictions["ft_step"] = predictions["ft_step"].astype("Int64").mask(predictions["method"] == BASE, 0)
    missing = [c for c in REQUIRED_PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions: missing required column(s): {', '.join(missing)}")
    pred = predictions[list(REQUIRED_PREDICTION_COLUMNS)]
    _check_predictions(pred)
    corpus, labels = _corpus_labels(predictions)

    meta = pred[GROUP_KEYS + META_COLUMNS].drop_duplicates(GROUP_KEYS)
    groups = {key: rows.set_index("example_id")["score"] for key, rows in pred.groupby(GROUP_KEYS, sort=False)}
    base_of = {
        (m.checkpoint, m.eval_set, m.format, m.metric): (m.model, m.eval_set, m.format, m.metric)
        for m in meta[meta["method"] == "base"].itertuples(index=False)
    }
    stats = []
    for m in meta.itertuples(index=False):
        key = (m.model, m.eval_set, m.format, m.metric)
        base = base_of.get((m.checkpoint, m.eval_set, m.format, m.metric))
        paired = m.method != "base" and base is not None
        diff = (np.nan, np.nan)
        if m.metric in corpus:
            fn, (ids, predicted, gold) = corpus[m.metric], labels[key]
            value, size = float(fn(predicted, gold)), ids.size
            low, high = corpus_ci(predicted, gold, fn, resamples, confidence, row_seed(seed, *key))
            if paired:
                diff = paired_corpus_diff_ci(labels[key], labels[base], fn, resamples, confidence,
                                             row_seed(seed, *key, "paired"))  # fmt: skip
        else:
            values = groups[key].to_numpy(dtype=np.float64)
            value, size = values.mean(), values.size
            low, high = percentile_ci(values, resamples, confidence, row_seed(seed, *key))
            if paired:
                diff = paired_diff_ci(groups[key], groups[base], resamples, confidence, row_seed(seed, *key, "paired"))
        stats.append((*key, value, low, high, size, *diff))
    stats = pd.DataFrame(stats, columns=[*GROUP_KEYS, "value", "ci_low", "ci_high", "n", "diff_ci_low", "diff_ci_high"])

    table = meta.merge(stats, on=GROUP_KEYS, how="inner", validate="one_to_one")
    checkpoints = {c["name"]: c for c in manifest.get("checkpoints", [])}
    table["step"] = [checkpoints.get(c, {}).get("step") for c in table["checkpoint"]]
    table["tokens"] = [checkpoints.get(c, {}).get("tokens") for c in table["checkpoint"]]
    table["lr_selected"] = _lr_selected(table, selections or [])
    table["study"] = study
    table = cast_performance(table[list(PERFORMANCE_COLUMNS)])
    return table.sort_values(_SORT_COLUMNS, na_position="last", kind="mergesort").reset_index(drop=True)


def paired_diff_ci(
    scores: pd.Series, base: pd.Series, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Paired percentile bootstrap interval of ``mean(scores) − mean(base)`` over shared examples.

    Both series are indexed by ``example_id``; only examples present in both count. Resampling
    the same examples for both models is resampling their per-example differences, so this is
    :func:`percentile_ci` of those differences. No shared example gives ``(nan, nan)``.
    """
    shared = scores.index.intersection(base.index)
    diffs = scores.loc[shared].to_numpy(dtype=np.float64) - base.loc[shared].to_numpy(dtype=np.float64)
    return percentile_ci(diffs, resamples, confidence, seed)


CorpusFn = Callable[[np.ndarray, np.ndarray], float]
# One row's examples: their example_ids, predicted labels and gold labels, aligned.
Labels = tuple[np.ndarray, np.ndarray, np.ndarray]


def corpus_ci(
    predictions: np.ndarray, golds: np.ndarray, corpus: CorpusFn, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``corpus(predictions, golds)`` over resampled examples.

    Each resample draws ``n = len(predictions)`` examples with replacement, the rows of the index
    matrix :func:`ptft.aggregate.bootstrap.percentile_ci` would draw for ``n`` scores with ``seed``,
    and takes ``corpus(predictions[idx], golds[idx])``, a prediction staying with its gold
    (:func:`ptft.aggregate.bootstrap.resampled_ci`). ``n == 0`` gives ``(nan, nan)``.
    """
    return resampled_ci(lambda idx: corpus(predictions[idx], golds[idx]), len(predictions), resamples, confidence, seed)


def paired_corpus_diff_ci(
    labels: Labels, base: Labels, corpus: CorpusFn, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Paired percentile bootstrap interval of ``corpus(labels) − corpus(base)`` over shared examples.

    The pairing rule of :func:`paired_diff_ci`: only examples (``example_id``) present in both count,
    in the order they have in ``labels``, and each resample takes the same examples from both models:
    with ``idx`` a row of the index matrix drawn for that many examples and ``seed``, the resample's
    change is ``corpus(p[idx], g[idx]) − corpus(p_base[idx], g_base[idx])``, each model with its own
    gold labels. No shared example gives ``(nan, nan)``.
    """
    ids, predicted, gold = labels
    base_ids, base_predicted, base_gold = base
    shared = pd.Index(ids).intersection(pd.Index(base_ids))
    here, there = pd.Index(ids).get_indexer(shared), pd.Index(base_ids).get_indexer(shared)
    p, g, bp, bg = predicted[here], gold[here], base_predicted[there], base_gold[there]
    return resampled_ci(lambda idx: corpus(p[idx], g[idx]) - corpus(bp[idx], bg[idx]), len(shared), resamples,
                        confidence, seed)  # fmt: skip


def _corpus_labels(predictions: pd.DataFrame) -> tuple[dict[str, CorpusFn], dict[tuple, Labels]]:
    """The corpus functions of the corpus-level metrics present, and each of their rows' :data:`Labels`."""
    corpus = {}
    for name in predictions["metric"].unique():
        metric = get_metric(name)
        if metric.aggregation == "corpus":
            corpus[name] = metric.corpus
    if not corpus:
        return corpus, {}
    missing = [c for c in LABEL_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions: missing column(s) {', '.join(missing)}, required for metric(s) "
                         f"{', '.join(corpus)}")  # fmt: skip
    rows = predictions.loc[predictions["metric"].isin(list(corpus)), [*GROUP_KEYS, "example_id", *LABEL_COLUMNS]]
    for column in LABEL_COLUMNS:
        if rows[column].isna().any():
            raise ValueError(f"predictions: column {column!r} has {int(rows[column].isna().sum())} null value(s) "
                             f"in rows of metric(s) {', '.join(corpus)}")  # fmt: skip
    # Fixed-width numpy strings: the corpus function sorts them on every resample, three times faster than objects.
    labels = {}
    for key, group in rows.groupby(GROUP_KEYS, sort=False):
        predicted, gold = group["prediction"].to_numpy(dtype=str), group["gold"].to_numpy(dtype=str)
        labels[key] = (group["example_id"].to_numpy(), predicted, gold)
    return corpus, labels


def _lr_selected(table: pd.DataFrame, selections: list[dict]) -> list:
    def key(checkpoint, task, method, seed, size, parent):
        return (checkpoint, task, method, None if pd.isna(seed) else int(seed), None if pd.isna(size) else int(size),
                None if parent is None or pd.isna(parent) else parent)  # fmt: skip

    chosen = {key(s["checkpoint"], s["task"], s["method"], s["seed"], s.get("train_size"), s.get("parent")):
              float(s["lr"]) for s in selections}  # fmt: skip
    out = []
    columns = ["checkpoint", "train_task", "method", "seed", "train_size", "parent", "lr"]
    for row in table[columns].itertuples(index=False):
        k = key(*row[:-1])
        out.append(pd.NA if k not in chosen else bool(np.isclose(row.lr, chosen[k], rtol=1e-9, atol=0)))
    return out


def validate_performance(df: pd.DataFrame) -> None:
    """Check a performance table against the contract; raise ``ValueError`` naming what is wrong.

    Checks the exact columns and their order, and that ``relation``, ``method`` and ``format``
    only hold the allowed values (:data:`RELATIONS`, :data:`METHODS`, :data:`FORMATS`).
    """
    if list(df.columns) != list(PERFORMANCE_COLUMNS):
        missing = [c for c in PERFORMANCE_COLUMNS if c not in df.columns]
        extra = [c for c in df.columns if c not in PERFORMANCE_COLUMNS]
        raise ValueError(
            f"performance table: columns must be {list(PERFORMANCE_COLUMNS)}; "
            f"missing {missing}, unexpected {extra}, got order {list(df.columns)}"
        )
    for column, allowed in (("relation", RELATIONS), ("method", METHODS), ("format", FORMATS)):
        bad = [v for v in df[column].unique() if v not in allowed]
        if bad:
            raise ValueError(
                f"performance table: column {column!r} has value {bad[0]!r}, allowed: {', '.join(allowed)}"
            )


def _check_predictions(pred: pd.DataFrame) -> None:
    for column in pred.columns:
        if column not in NULLABLE_PREDICTION_COLUMNS and pred[column].isna().any():
            raise ValueError(f"predictions: column {column!r} has {int(pred[column].isna().sum())} null value(s)")
    dup = pred.duplicated([*GROUP_KEYS, "example_id"])
    if dup.any():
        first = pred.loc[dup, [*GROUP_KEYS, "example_id"]].iloc[0].to_dict()
        raise ValueError(f"predictions: duplicate example (column 'example_id'): {first}")
    meta = pred[GROUP_KEYS + META_COLUMNS].drop_duplicates()
    clash = meta.duplicated(GROUP_KEYS, keep=False)
    if clash.any():
        first = meta.loc[clash, GROUP_KEYS].iloc[0]
        rows = meta.loc[(meta[GROUP_KEYS] == first).all(axis=1)]
        varying = [c for c in META_COLUMNS if rows[c].nunique(dropna=False) > 1]
        raise ValueError(
            f"predictions: column(s) {varying} not constant within model "
            f"{rows['model'].iloc[0]!r}, eval_set {rows['eval_set'].iloc[0]!r}"
        )


def cast_performance(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column, dtype in _DTYPES.items():
        if dtype == "float64":
            table[column] = pd.to_numeric(table[column]).astype("float64")
        else:
            table[column] = table[column].astype(dtype)
    return table
