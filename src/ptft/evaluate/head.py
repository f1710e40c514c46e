"""Scoring a classifier head: the class distribution of each input, from one forward pass.

A declared classification dataset (:mod:`ptft.data.declared`) is scored by the model's own head,
not by label words: the prediction is the most probable class (ties: the first), and every class's
log-probability is kept per example (``label_logprobs``), which is all the calibration measures
need (temperature scaling divides logits, and log-probabilities are logits up to a per-row constant).
"""

from __future__ import annotations

import torch

from ptft.finetune import heads
from ptft.finetune.methods import unwrap


def input_limit(model) -> int | None:
    """The most tokens an input may have: the position table's size, less RoBERTa's offset of pad id + 1."""
    config = unwrap(model).config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is None:
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        return positions - (config.pad_token_id or 0) - 1
    return positions


@torch.no_grad()
def class_logprobs(model, tokenizer, texts: list[str], batch_size: int) -> tuple[list[list[float]], list[int]]:
    """(log-probability of each class per text, tokens cut from each text to fit the model)."""
    limit = input_limit(model) or 10**9
    full = heads.encode_inputs(tokenizer, texts, 10**9)
    ids = heads.encode_inputs(tokenizer, texts, limit) if any(len(x) > limit for x in full) else full
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    rows: dict[int, list[float]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = heads.collate([ids[i] for i in chunk], tokenizer.pad_token_id, device)
        logits = model(**batch).logits.float()
        for i, row in zip(chunk, torch.log_softmax(logits, -1).double().cpu().tolist(), strict=True):
            rows[i] = row
    out = [rows[i] for i in range(len(ids))]
    return out, [len(a) - len(b) for a, b in zip(full, ids, strict=True)]
