"""The supervised fine-tuning loss: cross-entropy on the target tokens, the LM head only where there is one."""

from __future__ import annotations

import torch

from ptft.finetune.batching import IGNORE
from ptft.finetune.grad_buffers import KeptGrads
from ptft.finetune.methods import unwrap


def completion_loss(model, batch: dict, fast: bool, kept: KeptGrads | None = None) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (labels shifted by one).

    ``fast``: the LM head runs on the target positions only (see ``check_shortcuts`` in
    :mod:`ptft.finetune.train`). ``kept`` (fast path only): the embedding and head gradients go
    into kept buffers.
    """
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    # No KV cache: it is useless in training, and with one transformers ignores packed position_ids.
    inputs = {**{k: v for k, v in batch.items() if k != "labels"}, "use_cache": False}
    if fast:
        inner = unwrap(model)
        kept = kept if kept is not None and kept.active else None
        if kept is not None:
            inputs["inputs_embeds"] = kept.embed(inputs.pop("input_ids"))
        hidden = inner.base_model(**inputs).last_hidden_state[:, :-1][keep]
        logits = kept.head(hidden) if kept is not None else inner.get_output_embeddings()(hidden)
    else:
        logits = model(**inputs).logits[:, :-1][keep]
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
