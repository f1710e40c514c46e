"""Scorers: per task kind, how one eval set in one format is scored and which metrics that gives.

:func:`ptft.evaluate.scoring.score_items` looks the task's kind up here. A scorer is called as
``score(model, tokenizer, task, items, prompts, golds, cfg)`` (``golds``: the gold completion of
each item, :func:`ptft.data.prompts.completion`) and returns one dict per metric of the task
(``task.metrics``, in that order) with the per-example columns of ``predictions.parquet``:
``metric``, ``prediction``, ``gold``, ``score`` (that metric's per-example values),
``label_logprobs`` and ``truncated_tokens`` (prompt tokens cut to fit the context window, 0 if
none). A scorer declares the metrics it can produce; the first is the default metric of a task
type of its kind (:mod:`ptft.data.tasks`).

The built-in scorers are thin: the implementations are :mod:`ptft.evaluate.classify`,
:mod:`ptft.evaluate.generate` and :mod:`ptft.evaluate.multiple_choice`. They live here, not in
those modules, because ``ptft.data.tasks`` imports this registry for default metrics whenever a
plan is built: registering from the implementation modules would load torch for that. Each
scorer imports its implementation when it runs.

Adding a task kind:

1. a module ``src/ptft/evaluate/<kind>.py`` with the implementation and its scorer::

       @register_scorer("<kind>", metrics=("<metric>", ...))
       def score_<kind>(model, tokenizer, task, items, prompts, golds, cfg) -> list[dict]: ...

   with torch and other heavy imports inside functions, as here (this module imports it);
2. any new metric registered in :mod:`ptft.evaluate.metrics`;
3. one import line at the end of this module: ``from ptft.evaluate import <kind>  # noqa: E402, F401``.

Then a task type of that kind in ``ptft.data.tasks.TASK_TYPES`` is scored, by default on the
scorer's first metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ptft.evaluate.metrics import accuracy, get_metric, rouge_l

if TYPE_CHECKING:
    from ptft.data.tasks import TaskType

ScoreFn = Callable[..., list[dict]]


@dataclass(frozen=True)
class Scorer:
    kind: str
    metrics: tuple[str, ...]  # the metrics it can produce; the first is a task type's default
    score: ScoreFn  # (model, tokenizer, task, items, prompts, golds, cfg) -> one result dict per task metric


SCORERS: dict[str, Scorer] = {}


def register_scorer(kind: str, metrics: Sequence[str]) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register ``fn`` as the scorer of task ``kind``, producing ``metrics`` (registered metrics)."""
    if kind in SCORERS:
        raise ValueError(f"task kind {kind!r} already has a scorer ({SCORERS[kind].score.__qualname__})")
    if not metrics:
        raise ValueError(f"scorer of task kind {kind!r}: name the metrics it produces")
    for name in metrics:
        get_metric(name)

    def register(fn: ScoreFn) -> ScoreFn:
        SCORERS[kind] = Scorer(kind, tuple(metrics), fn)
        return fn

    return register


def unregister_scorer(kind: str) -> Scorer:
    return SCORERS.pop(kind)


def get_scorer(kind: str) -> Scorer:
    try:
        return SCORERS[kind]
    except KeyError:
        raise ValueError(f"no scorer for task kind {kind!r}; the kinds that are scored: {', '.join(SCORERS)}") from None


def default_metric(kind: str) -> str:
    """The first metric of the kind's scorer; ``""`` for a kind that is trained on but never scored (chat, text)."""
    scorer = SCORERS.get(kind)
    return scorer.metrics[0] if scorer else ""


@register_scorer("classification", metrics=("accuracy",))
def score_classification(model, tokenizer, task: TaskType, items, prompts, golds, cfg) -> list[dict]:
    """The label word ``evaluate.classification`` picks, scored by accuracy, with TokenProb log-probabilities."""
    from ptft.evaluate.classify import classify

    predictions, logprobs, cut = classify(model, tokenizer, prompts, task.labels, cfg, return_truncated=True)
    return [
        {
            "metric": task.metric,
            "prediction": predictions,
            "gold": golds,
            "score": accuracy(predictions, golds),
            "label_logprobs": [list(map(float, r)) for r in logprobs],
            "truncated_tokens": [int(c) for c in cut],
        }
    ]


@register_scorer("sequence_classification", metrics=("accuracy", "mcc"))
def score_sequence_classification(model, tokenizer, task: TaskType, items, prompts, golds, cfg) -> list[dict]:
    """The classifier head's most probable class, with every class's log-probability (ptft.evaluate.head).

    Accuracy per example; Matthews correlation (CoLA) is a property of the whole set, computed from the
    predictions and golds where results are aggregated.
    """
    from ptft.evaluate.head import class_logprobs

    logprobs, cut = class_logprobs(model, tokenizer, [str(p) for p in prompts], cfg["batch_size"])
    predictions = [task.labels[max(range(len(row)), key=row.__getitem__)] for row in logprobs]
    return [
        {
            "metric": metric,
            "prediction": predictions,
            "gold": golds,
            "score": accuracy(predictions, golds),
            "label_logprobs": logprobs,
            "truncated_tokens": cut,
        }
        for metric in task.metrics
    ]


@register_scorer("generation", metrics=("rougeL", "nll"))
def score_generation(model, tokenizer, task: TaskType, items, prompts, golds, cfg) -> list[dict]:
    """rougeL: greedy generation cut at the stop string, against the gold; nll: the gold itself, per token.

    Only the metrics the task reports are computed: a task scored by ``nll`` alone generates nothing.
    """
    from ptft.evaluate.encoding import add_bos_setting
    from ptft.evaluate.generate import generate_greedy, generation_batch_size
    from ptft.evaluate.prefix import shares_prefix

    out = []
    for metric in task.metrics:
        if metric == "nll":
            scores, cut = completion_nll(model, tokenizer, prompts, golds, cfg["batch_size"], add_bos_setting(cfg))
            predictions = [""] * len(golds)  # the gold is scored, nothing is generated
        else:
            predictions, cut = generate_greedy(model, tokenizer, prompts, cfg["max_new_tokens"]["generation"],
                                               cfg["stop"], generation_batch_size(cfg), add_bos=add_bos_setting(cfg),
                                               return_truncated=True, decoder=cfg.get("decoder", "auto"),
                                               shared_prefix=shares_prefix(cfg))  # fmt: skip
            scores = rouge_l(predictions, golds, stemmer=cfg["rouge_stemmer"])
        out.append({"metric": metric, "prediction": predictions, "gold": golds, "score": scores,
                    "label_logprobs": [[] for _ in items], "truncated_tokens": [int(c) for c in cut]})  # fmt: skip
    return out


def completion_nll(model, tokenizer, prompts, golds, batch_size: int, add_bos) -> tuple[list[float], list[int]]:
    """Per item, metric ``nll`` of its gold given its prompt, and the prompt tokens the context window cut."""
    from ptft.evaluate.batching import model_max_length
    from ptft.evaluate.multiple_choice import encode_requests, encoded_loglikelihoods

    encoded = encode_requests(tokenizer, list(zip(prompts, golds, strict=True)), add_bos)
    summed = encoded_loglikelihoods(model, tokenizer, encoded, batch_size)
    window = model_max_length(model, tokenizer) + 1
    cut = [max(0, len(ctx) + len(cont) - window) for ctx, cont in encoded]
    return [float(-ll / len(cont)) for ll, (_, cont) in zip(summed, encoded, strict=True)], cut


@register_scorer("multiple_choice", metrics=("acc", "acc_norm"))
def score_multiple_choice_items(model, tokenizer, task: TaskType, items, prompts, golds, cfg) -> list[dict]:
    """Each choice's log-likelihood as a continuation of the prompt; one result per metric the task names."""
    from ptft.evaluate.encoding import add_bos_setting
    from ptft.evaluate.multiple_choice import mc_predictions, score_multiple_choice

    choices = [list(r["choices"]) for r in items]
    lls, cut = score_multiple_choice(
        model, tokenizer, prompts, choices, cfg["batch_size"], add_bos=add_bos_setting(cfg), return_truncated=True
    )
    picks = [mc_predictions(ll, c) for ll, c in zip(lls, choices, strict=True)]
    out = []
    for metric in task.metrics:
        idx = [p[metric] for p in picks]
        scores = [float(i == int(r["label"])) for i, r in zip(idx, items, strict=True)]
        predictions = [c[i] for c, i in zip(choices, idx, strict=True)]
        out.append(
            {
                "metric": metric,
                "prediction": predictions,
                "gold": golds,
                "score": scores,
                "label_logprobs": [list(map(float, ll)) for ll in lls],
                "truncated_tokens": [int(c) for c in cut],
            }
        )
    return out


# Scorers of further task kinds register on import: one line each here (module docstring).
