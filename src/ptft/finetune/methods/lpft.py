"""``lpft``: linear probing, then fine-tuning (Tomihari & Sato 2024), for classification tasks.

On a declared classification dataset the model has a classifier head, fitted as :mod:`.lp` fits
it; on a task of label words, the head is the LM head's label rows, as follows.

**The linear head of a causal LM.** TokenProb scoring (``ptft.evaluate.tokenprob``) predicts a
label from the LM head's logits of the label tokens at the last prompt position, so for a
classification task the rows of the LM head that belong to the labels' first tokens *are* a
linear classifier on the final hidden state (the "penultimate representation"): softmax over
those K rows is the model's label distribution. LP-FT fits exactly those K rows by multinomial
logistic regression on frozen features (:func:`fit_linear_head`), writes them back into the
head, and then fine-tunes everything from there with the usual loss. When the head is tied to
the input embeddings it is untied first (a copy), so probing does not move any input
representation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ptft.data.prompts import completion, join_prompt_completion, render_prompt
from ptft.finetune.methods.base import Method, RunInputs, unwrap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LpftConfig:
    """``finetune.lpft`` (and ``finetune.per_task.<task>.lpft``)."""

    l2: float = field(default=0.001, metadata={"help": "L2 penalty on the fitted label rows", "minimum": 0})
    max_iter: int = field(default=100, metadata={"help": "iterations of full-batch L-BFGS at most", "minimum": 1})
    batch_size: int = field(
        default=16, metadata={"help": "prompts per forward pass when computing the features", "minimum": 1}
    )
    # A classifier head (a declared dataset) is fitted as lp fits it (ptft.finetune.methods.lp), by these two.
    folds: int = field(default=5, metadata={"help": "classifier head: cross-validation folds choosing the L2 "
                                            "strength (l2 is for label words)", "minimum": 2})  # fmt: skip
    cs: int = field(default=10, metadata={"help": "classifier head: values of C tried, log-spaced 1e-4..1e4",
                                          "minimum": 1})  # fmt: skip


class LPFT(Method):
    name = "lpft"
    task_kinds = ("classification", "sequence_classification")
    config = LpftConfig

    def refusal(self, task: str, kind: str) -> str:
        if kind == "chat":  # a chat needs instruct whatever the method asked for
            return super().refusal(task, kind)
        return f"finetune.methods: lpft fits a linear head on labels; task {task!r} is {kind}"

    def prepare(self, model, run: RunInputs):
        if run.task.kind == "sequence_classification":
            from ptft.finetune.methods.lp import LpConfig, fit_head

            # The head as lp fits it: its folds and cs (left out of a run config at their defaults, ptft.plan) and
            # lp's iteration limit; l2 and max_iter are the label-word probe's.
            block = run.cfg["lpft"]
            lp = {k: block.get(k, getattr(LpConfig, k)) for k in ("folds", "cs", "batch_size")}
            lp["max_iter"] = LpConfig.max_iter
            return model, ({} if run.resuming else fit_head(model, run, lp))
        if run.resuming:  # the fitted head is in the saved state, loaded over this one
            untie_head(unwrap(model))
            return model, {}
        stats = fit_linear_head(model, run.tokenizer, run.task, run.records, run.cfg["format"], run.cfg["lpft"],
                                run.device)  # fmt: skip
        return model, stats


def label_token_ids(tokenizer, task) -> list[int]:
    """The first token of each label's completion (with its leading space, as trained and scored)."""
    ids = []
    for label in task.labels:
        _, target = join_prompt_completion("x: ", label)
        ids.append(tokenizer(target, add_special_tokens=False)["input_ids"][0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"lpft: labels {task.labels} of task {task.name!r} share a first token; no linear head fits")
    return ids


def untie_head(model):
    """Give the model an LM head of its own (a copy) if it shares weights with the embeddings."""
    import torch

    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        new = torch.nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
        new = new.to(device=head.weight.device, dtype=head.weight.dtype)
        new.weight.data.copy_(head.weight.data)
        model.set_output_embeddings(new)
        model.config.tie_word_embeddings = False
        head = new
    return head


def prompt_features(model, tokenizer, task, records, fmt: str, batch_size: int, device):
    """Final hidden state (after the last norm) at each record's last prompt token."""
    import torch

    from ptft.finetune.batching import collate_padded

    body = unwrap(model).base_model
    prompts = [join_prompt_completion(render_prompt(task, r, fmt), completion(task, r))[0] for r in records]
    feats = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
            batch = collate_padded([(x, x) for x in enc], 0, device)  # right-padded, as the probes
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            hidden = body(**inputs, use_cache=False).last_hidden_state
            ends = torch.tensor([len(x) - 1 for x in enc], device=device)
            feats.append(hidden[torch.arange(len(enc), device=device), ends].float())
    return torch.cat(feats)


def fit_linear_head(model, tokenizer, task, records, fmt: str, lp: dict, device) -> dict:
    """Linear probing: fit the label rows of the (untied) LM head on frozen features.

    Multinomial logistic regression over the K label tokens' rows, started from their
    pre-trained values, with L2 penalty ``lp.l2`` on the weights, full-batch L-BFGS for at most
    ``lp.max_iter`` iterations. Returns accuracies before and after and the head's norm.
    """
    import torch

    if task.kind != "classification":
        raise ValueError(f"lpft: task {task.name!r} is {task.kind}; linear probing needs a classification task")
    was_training = model.training
    model.eval()
    label_ids = label_token_ids(tokenizer, task)
    x = prompt_features(model, tokenizer, task, records, fmt, lp["batch_size"], device)
    y = torch.tensor([int(r["label"]) for r in records], device=device)
    head = untie_head(unwrap(model))
    w = head.weight.data[label_ids].float().clone().requires_grad_(True)
    before = float(((x @ w.T).argmax(1) == y).float().mean())
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=lp["max_iter"], line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T, y) + 0.5 * lp["l2"] * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = w.detach()
    head.weight.data[label_ids] = w.to(head.weight.dtype)
    after = float(((x @ w.T).argmax(1) == y).float().mean())
    model.train(was_training)
    stats = {"lp_accuracy_before": before, "lp_accuracy_after": after, "lp_head_norm": float(w.norm())}
    log.info("linear probe on %d examples: %s", len(records), stats)
    return stats
