"""Per-example metrics, defined exactly.

- ``accuracy``: 1.0 if the predicted label string equals the gold label string, else 0.0.
- ``rougeL``: the F-measure of ROUGE-L exactly as the ``rouge-score`` package computes it (its
  default tokenizer: lower-case, non-alphanumeric characters as separators), gold as the
  target, with Porter stemming only if configured; see :mod:`ptft.evaluate.rouge`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ptft.evaluate.rouge import rouge_l_fmeasure


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> list[float]:
    return [float(p == g) for p, g in zip(predictions, golds, strict=True)]


def rouge_l(predictions: Sequence[str], golds: Sequence[str], stemmer: bool = False) -> list[float]:
    return [rouge_l_fmeasure(p, g, stemmer) for p, g in zip(predictions, golds, strict=True)]
