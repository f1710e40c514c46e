"""``lp``: linear probing of a classifier head on frozen features (Tomihari & Sato 2024), no gradient step.

The head (:func:`ptft.finetune.heads.head_layer`) is fitted as the paper fits it: multinomial
logistic regression with an L2 penalty whose strength is chosen by cross-validation
(scikit-learn's ``LogisticRegressionCV``, 5 stratified folds, 10 values of C on a log grid from
1e-4 to 1e4) on the features of the training split, i.e. the head's input with the body in eval
mode. :func:`fit_head` is shared: ``lpft`` fine-tunes everything from the fitted head, ``lp_lora``
trains LoRA adapters and the head from it.

A two-class problem gives scikit-learn one weight vector ``w`` (the log-odds of class 1); the
head gets the rows ``-w/2`` and ``+w/2`` (and biases ``∓b/2``), the representation of the same
probabilities with the least Frobenius norm, which is the norm the study reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ptft.finetune.methods.base import Method, RunInputs

log = logging.getLogger(__name__)

HEAD_KINDS = ("sequence_classification",)


@dataclass(frozen=True)
class LpConfig:
    """``finetune.lp`` (and ``finetune.per_task.<task>.lp``): the logistic regression of linear probing."""

    folds: int = field(default=5, metadata={"help": "cross-validation folds choosing the L2 strength", "minimum": 2})
    cs: int = field(default=10, metadata={"help": "values of C (inverse L2 strength), log-spaced 1e-4..1e4",
                                          "minimum": 1})  # fmt: skip
    max_iter: int = field(default=1000, metadata={"help": "L-BFGS iterations per fit at most", "minimum": 1})
    batch_size: int = field(default=32, metadata={"help": "examples per forward pass computing features",
                                                  "minimum": 1})  # fmt: skip


def features(model, tokenizer, task, records: list[dict], max_length: int, batch_size: int, device):
    """The head's input for each record (body in eval mode, no gradient), as float64 numpy, and the logits."""
    import numpy as np
    import torch

    from ptft.data.prompts import render_prompt
    from ptft.finetune import heads

    was_training = model.training
    model.eval()
    texts = [render_prompt(task, r, "default") for r in records]
    ids = heads.encode_inputs(tokenizer, texts, max_length)
    feats, logits = [], []
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            batch = heads.collate(ids[start : start + batch_size], tokenizer.pad_token_id, device)
            f, z = heads.pooled_features(model, batch["input_ids"], batch["attention_mask"])
            feats.append(f.double().cpu().numpy())
            logits.append(z.double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(feats), np.concatenate(logits)


def fit_head(model, run: RunInputs, lp: dict) -> dict:
    """Fit the model's head by cross-validated logistic regression on frozen features; statistics for the summary."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegressionCV

    from ptft.finetune import heads

    task = run.task
    y = np.array([int(r["label"]) for r in run.records])
    missing = sorted(set(range(len(task.labels))) - set(y.tolist()))
    if missing:
        names = [task.labels[i] for i in missing]
        raise ValueError(f"lp: the training split of {task.name!r} has no example of label(s) {names}; "
                         f"linear probing cannot fit their rows")  # fmt: skip
    x, _ = features(model, run.tokenizer, task, run.records, run.cfg["max_length"], lp["batch_size"], run.device)
    head = heads.head_layer(model)
    norm_init = float(head.weight.detach().float().norm())
    folds = min(lp["folds"], int(np.bincount(y).min()))
    if folds < lp["folds"]:
        log.warning("lp: the rarest label has %d training examples; cross-validating over %d folds, not %d",
                    folds, folds, lp["folds"])  # fmt: skip
    if folds < 2:
        raise ValueError(f"lp: a label of {task.name!r} has a single training example; cross-validation needs two")
    # l1_ratios (0,) is the L2 penalty, spelled as scikit-learn >= 1.8 wants it; the new attributes make C_ a float.
    clf = LogisticRegressionCV(Cs=lp["cs"], cv=folds, max_iter=lp["max_iter"], scoring="accuracy", l1_ratios=(0.0,),
                               use_legacy_attributes=False)  # fmt: skip
    clf.fit(x, y)
    weight, bias = clf.coef_, clf.intercept_
    if len(task.labels) == 2:  # one log-odds vector -> the least-norm pair of rows with the same probabilities
        weight, bias = np.stack([-weight[0] / 2, weight[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        elif np.abs(bias).max() > 0:
            log.warning("lp: the head has no bias; fitted intercepts up to %.3g are dropped", np.abs(bias).max())
    accuracy = float((clf.predict(x) == y).mean())
    stats = {"lp_c": float(clf.C_), "lp_train_accuracy": accuracy, "head_norm_init": norm_init,
             "head_norm_lp": float(np.linalg.norm(weight))}  # fmt: skip
    log.info("linear probe on %d examples: %s", len(y), stats)
    return stats


class LP(Method):
    name = "lp"
    task_kinds = HEAD_KINDS
    config = LpConfig
    trains = False  # the fitted head is the result: the loop runs no step

    def refusal(self, task: str, kind: str) -> str:
        return f"finetune.methods: lp fits a classifier head; task {task!r} is {kind}, not a declared dataset"

    def prepare(self, model, run: RunInputs):
        for p in model.parameters():
            p.requires_grad_(False)
        return model, fit_head(model, run, run.cfg["lp"])
