"""What the LP-FT study measures of a fine-tuned classifier, per eval set: calibration and feature change.

    ptft measure-classifier --model-dir results/s/finetune/<run>/model --start <its starting checkpoint> \
        --validation results/s/data/validation/<task>.parquet --data-dir results/s/data \
        --model '<metadata JSON>' --evaluations '<JSON>' --summary .../summary.json --out ... --reliability ...

Definitions (Tomihari & Sato 2024; the paper leaves the averaging of the feature quantities open,
these are ptft's):

- features ``f(x)``: the head's input (:func:`ptft.finetune.heads.pooled_features`), the model in
  eval mode; ``f₀(x)`` the same of the run's starting model (the pre-trained checkpoint, or the
  parent run), whose own head plays no part.
- ``feature_change`` (Diff(F)) = mean over the set's examples of ‖f(x) − f₀(x)‖₂;
  ``feature_norm`` = mean ‖f(x)‖₂, ``feature_norm_start`` the same of f₀.
- ``feature_cosine`` (CS(F)) = mean over the set's pairs of distinct examples of cos(f(xᵢ), f(xⱼ));
  ``feature_cosine_start`` the same of f₀.
- ``logit_norm`` = mean ‖z(x)‖₂ of the logits.
- ``head_norm`` = ‖W‖_F of the head's weight after training; ``head_norm_start`` the same when the
  training loop began (after linear probing for lp, lpft and lp_lora; the random head otherwise),
  from the run's summary.
- calibration (:mod:`ptft.evaluate.calibration`): ``temperature`` fitted on the NLL of the run's
  validation split, and on the eval set ``ece``, ``mce`` (15 equal-width bins on the max
  probability), ``brier``, ``nll`` and ``accuracy``, each ``_before`` and ``_after`` temperature
  scaling. The reliability diagram's bins go to a second file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ptft.analysis.lpft import CALIBRATION_QUANTITIES
from ptft.evaluate import calibration

log = logging.getLogger(__name__)

BINS = 15


def mean_pairwise_cosine(features: np.ndarray) -> float:
    """Mean of cos(fᵢ, fⱼ) over the pairs i ≠ j (NaN for fewer than two rows)."""
    n = len(features)
    if n < 2:
        return float("nan")
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    total = unit.sum(axis=0)
    # Σ_{i≠j} uᵢ·uⱼ = ‖Σ uᵢ‖² − Σ ‖uᵢ‖²
    return float((total @ total - (unit * unit).sum()) / (n * (n - 1)))


def feature_quantities(feats: np.ndarray, start: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    return {
        "feature_change": float(np.linalg.norm(feats - start, axis=1).mean()),
        "feature_norm": float(np.linalg.norm(feats, axis=1).mean()),
        "feature_norm_start": float(np.linalg.norm(start, axis=1).mean()),
        "feature_cosine": mean_pairwise_cosine(feats),
        "feature_cosine_start": mean_pairwise_cosine(start),
        "logit_norm": float(np.linalg.norm(logits, axis=1).mean()),
    }


def _measure(model, tokenizer, task, records, max_length: int, batch_size: int, device):
    from ptft.finetune.methods.lp import features

    return features(model, tokenizer, task, records, max_length, batch_size, device)


def measure(model_dir, start, validation, data_dir, meta: dict, evaluations: list[dict], summary: dict,
            max_length: int, batch_size: int = 32) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """(quantities: a row per eval set and quantity, reliability bins: a row per eval set, scaling and bin)."""
    import torch

    from ptft.data.registry import get_dataset
    from ptft.finetune import heads

    device = "cuda" if torch.cuda.is_available() else "cpu"
    task = get_dataset(meta["train_task"]).task
    n_labels = len(task.labels)
    model, tokenizer = heads.load_classifier(model_dir, n_labels, dtype=torch.float32, device=device)
    start_model, start_tokenizer = heads.load_classifier(start, n_labels, dtype=torch.float32, device=device)
    head = heads.head_layer(model)
    head_norm = float(head.weight.detach().double().norm())
    val_records = pd.read_parquet(validation).to_dict("records")
    _, val_logits = _measure(model, tokenizer, task, val_records, max_length, batch_size, device)
    val_labels = np.array([int(r["label"]) for r in val_records])
    temperature = calibration.fit_temperature(val_logits, val_labels)
    log.info("temperature fitted on %d validation examples: %.4f", len(val_records), temperature)
    rows, bins = [], []
    for ev in evaluations:
        eval_set = ev["eval_set"]
        eval_task = get_dataset(eval_set).task
        records = pd.read_parquet(Path(data_dir) / "eval" / f"{eval_set}.parquet").to_dict("records")
        labels = np.array([int(r["label"]) for r in records])
        feats, logits = _measure(model, tokenizer, eval_task, records, max_length, batch_size, device)
        start_feats, _ = _measure(start_model, start_tokenizer, eval_task, records, max_length, batch_size, device)
        values = feature_quantities(feats, start_feats, logits)
        values |= {"head_norm": head_norm, "head_norm_start": float(summary.get("head_norm_start", np.nan))}
        summary_cal = calibration.calibration_summary(logits, labels, val_logits, val_labels, BINS)
        values |= {q: float(summary_cal[q]) for q in CALIBRATION_QUANTITIES}
        rows += [{"eval_set": eval_set, "eval_task": eval_task.name, "relation": ev["relation"], "metric": q,
                  "value": v, "n": len(records)} for q, v in values.items()]  # fmt: skip
        for when, t in (("before", 1.0), ("after", temperature)):
            table = calibration.reliability(calibration.softmax(logits, t), labels, BINS)
            bins.append(table.assign(eval_set=eval_set, scaling=when))
        log.info("%s on %s: %s", meta["model"], eval_set, {k: round(v, 4) for k, v in values.items()})
    keys = {k: meta[k] for k in ("model", "checkpoint", "train_task", "method", "lr", "seed", "train_size", "parent")}
    quantities = pd.DataFrame(rows).assign(**keys, format="default", shots=0, ft_step=summary.get("ft_step"))
    reliability = pd.concat(bins, ignore_index=True).assign(**keys)
    return quantities, reliability
