"""The metric registry: every metric a result or an lr selection names, with its exact definition.

As in lm-evaluation-harness, a metric is registered once with its definition, its aggregation and
``higher_is_better``; tables, figures and the lr selection read the direction from here instead of
knowing it per name. A metric computed from (prediction, gold) strings also registers its
per-example function; ``acc``/``acc_norm`` are decided from log-likelihoods by the multiple-choice
scorer, and ``loss``/``score`` are validation numbers of a training run, so those carry none.

Adding a metric: one :func:`register_metric` call below (name, definition, ``higher_is_better``,
per-example function if any, or ``aggregation="corpus"`` and the corpus function of a metric that is
not a mean over examples); a scorer that produces it lists it in its ``metrics``
(:mod:`ptft.evaluate.scorers`).

This module imports nothing heavy: :mod:`ptft.data.tasks` reaches it through the scorer registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    definition: str  # how one value is computed and how values aggregate, exactly
    higher_is_better: bool
    per_example: Callable[..., float] | None = None  # (prediction, gold, **options) -> value
    # "mean": the mean of per-example values; "token_mean": a mean over completion tokens; "corpus": one value
    # computed from all examples at once by ``corpus`` (not a mean of anything, so not decomposable per example).
    aggregation: str = "mean"
    # (predictions, golds) -> value, the whole eval set's label strings in example order; set exactly when
    # aggregation is "corpus". The aggregation also applies it to bootstrap resamples of the examples
    # (ptft.aggregate.performance), given as 1-D numpy string arrays.
    corpus: Callable[[Sequence[str], Sequence[str]], float] | None = None


AGGREGATIONS = ("mean", "token_mean", "corpus")


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    if not metric.definition.strip():
        raise ValueError(f"metric {metric.name!r}: a definition is required")
    if metric.aggregation not in AGGREGATIONS:
        raise ValueError(
            f"metric {metric.name!r}: aggregation must be one of {AGGREGATIONS}, got {metric.aggregation!r}"
        )
    if (metric.aggregation == "corpus") != (metric.corpus is not None):
        raise ValueError(
            f"metric {metric.name!r}: a corpus function is required with, and only with, aggregation 'corpus'"
        )
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; registered: {', '.join(METRICS)}") from None


def higher_is_better(name: str) -> bool:
    return get_metric(name).higher_is_better


def exact_match(prediction: str, gold: str) -> float:
    return float(prediction == gold)


def rouge_l_one(prediction: str, gold: str, stemmer: bool = False) -> float:
    # rouge-score pulls in nltk (a third of a second), which a plan or a task lookup never needs.
    from ptft.evaluate.rouge import rouge_l_fmeasure

    return rouge_l_fmeasure(prediction, gold, stemmer)


def matthews_corrcoef(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """:func:`ptft.evaluate.calibration.matthews` of ``predictions`` vs ``golds`` (sklearn's ``matthews_corrcoef``)."""
    # calibration imports scipy (a quarter of a second), which a plan or a task lookup never needs.
    from ptft.evaluate.calibration import matthews

    return matthews(predictions, golds)


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> list[float]:
    return [exact_match(p, g) for p, g in zip(predictions, golds, strict=True)]


def rouge_l(predictions: Sequence[str], golds: Sequence[str], stemmer: bool = False) -> list[float]:
    from ptft.evaluate.rouge import rouge_l_fmeasure

    return [rouge_l_fmeasure(p, g, stemmer) for p, g in zip(predictions, golds, strict=True)]


register_metric(
    Metric(
        name="accuracy",
        definition=(
            "Per example: 1.0 if the predicted label string equals the gold label string exactly, else 0.0; "
            "the prediction is the label word the evaluate.classification method picks (ptft.evaluate.classify). "
            "Aggregation: mean over examples."
        ),
        higher_is_better=True,
        per_example=exact_match,
    )
)
register_metric(
    Metric(
        name="rougeL",
        definition=(
            "Per example: the ROUGE-L F-measure exactly as rouge-score computes it "
            "(RougeScorer(['rougeL'], use_stemmer).score(gold, prediction)['rougeL'].fmeasure): both texts "
            "tokenized by rouge_score.tokenize (lower-cased, every character outside [a-z0-9] a separator, "
            "Porter-stemmed if longer than 3 characters only when evaluate.rouge_stemmer is set); with L the "
            "length of their longest common subsequence, P = L / len(prediction), R = L / len(gold), "
            "F = 2PR / (P + R), and 0 if either text has no tokens or L = 0 (ptft.evaluate.rouge). "
            "Aggregation: mean over examples."
        ),
        higher_is_better=True,
        per_example=rouge_l_one,
    )
)
register_metric(
    Metric(
        name="acc",
        definition=(
            "lm-evaluation-harness multiple choice. Per example: 1.0 if argmax_i ll_i is the gold index, else 0.0, "
            "where ll_i is the summed log-likelihood of the continuation ' ' + choice_i given the prompt, encoded "
            "and truncated as lm-eval does (ptft.evaluate.multiple_choice); ties go to the first choice. "
            "Aggregation: mean over examples."
        ),
        higher_is_better=True,
    )
)
register_metric(
    Metric(
        name="acc_norm",
        definition=(
            "lm-evaluation-harness multiple choice. Per example: 1.0 if argmax_i ll_i / len(choice_i) is the gold "
            "index, else 0.0, with ll_i as for acc and len(choice_i) the number of characters of the choice string "
            "without the delimiter (lm-eval's completion_len); ties go to the first choice. "
            "Aggregation: mean over examples."
        ),
        higher_is_better=True,
    )
)
register_metric(
    Metric(
        name="loss",
        definition=(
            "Validation metric of the lr selection: the cross-entropy of every completion token (the tokens "
            "trained on) of the validation examples, summed and divided by the number of those tokens, so an "
            "example weighs by its completion length (ptft.finetune.train.validation_loss). "
            "Aggregation: mean over completion tokens."
        ),
        higher_is_better=False,
        aggregation="token_mean",
    )
)
register_metric(
    Metric(
        name="score",
        definition=(
            "Validation metric of the lr selection: the task's primary metric (TaskType.metric, as defined here) "
            "on the validation examples, zero-shot in the training format with the evaluation defaults "
            "(ptft.finetune.train.validation_score). Aggregation: mean over examples."
        ),
        higher_is_better=True,
    )
)
register_metric(
    Metric(
        name="nll",
        definition=(
            "Per example: the negative log-likelihood of the gold completion given the prompt, per token, in nats: "
            "-(summed log-likelihood of the continuation, as lm-eval's loglikelihood request (prompt, gold) defines "
            "it, see acc) / (the number of continuation tokens) (ptft.evaluate.scorers.completion_nll). Scores the "
            "gold text, not a generation: how readily the model would write it. "
            "Aggregation: mean over examples."
        ),
        higher_is_better=False,
    )
)
register_metric(
    Metric(
        name="mcc",
        definition=(
            "Corpus-level, no per-example value: the Matthews correlation coefficient of the predicted vs the gold "
            "labels over the whole eval set; for more than two classes Gorodkin's R_K, with t_k / p_k the number of "
            "gold / predicted labels k, c the number correct and s the number of examples, "
            "(c*s - sum_k t_k p_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)), and 0 when the denominator is 0, "
            "as sklearn.metrics.matthews_corrcoef (ptft.evaluate.calibration.matthews). CoLA's metric in GLUE. "
            "Aggregation: computed once from all examples, not a mean of per-example values."
        ),
        higher_is_better=True,
        aggregation="corpus",
        corpus=matthews_corrcoef,
    )
)
