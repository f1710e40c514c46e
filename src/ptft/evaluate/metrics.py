"""Per-example metrics, defined exactly.

- ``accuracy``: 1.0 if the predicted label string equals the gold label string, else 0.0.
- ``rougeL``: the F-measure of ROUGE-L from the ``rouge-score`` package (its default
  tokenizer: lower-case, non-alphanumeric characters as separators), gold as the target,
  with Porter stemming only if configured.
"""

from __future__ import annotations

from collections.abc import Sequence

from rouge_score import rouge_scorer


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> list[float]:
    return [float(p == g) for p, g in zip(predictions, golds, strict=True)]


def rouge_l(predictions: Sequence[str], golds: Sequence[str], stemmer: bool = False) -> list[float]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)
    return [scorer.score(g, p)["rougeL"].fmeasure for p, g in zip(predictions, golds, strict=True)]
