"""The losses' shared part: log-probabilities of the target tokens, the LM head only where there is one."""

from __future__ import annotations

import torch

from ptft.finetune.batching import IGNORE
from ptft.finetune.grad_buffers import KeptGrads
from ptft.finetune.methods import unwrap
from ptft.finetune.sharded import is_sharded

# Keys of a collated batch that are not inputs of the model (ptft.finetune.batching.collate).
NOT_MODEL_INPUTS = ("labels", "n_pairs", "reference")


def target_logits(model, batch: dict, fast: bool, kept: KeptGrads | None = None):
    """(logits, targets) of the batch's target positions (labels shifted by one), and the target mask.

    ``fast``: the LM head runs on the target positions only (see ``check_shortcuts`` in
    :mod:`ptft.finetune.train`), except on a sharded model. ``kept`` (fast path only): the embedding
    and head gradients go into kept buffers.
    """
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    # No KV cache: it is useless in training, and with one transformers ignores packed position_ids.
    inputs = {**{k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}, "use_cache": False}
    # A sharded model gathers its embeddings and head in its own forward only: it takes the plain path.
    if fast and not is_sharded(model):
        inner = unwrap(model)
        kept = kept if kept is not None and kept.active else None
        if kept is not None:
            inputs["inputs_embeds"] = kept.embed(inputs.pop("input_ids"))
        hidden = inner.base_model(**inputs).last_hidden_state[:, :-1][keep]
        logits = kept.head(hidden) if kept is not None else inner.get_output_embeddings()(hidden)
    else:
        logits = model(**inputs).logits[:, :-1][keep]
    # At least float32 (a bf16 autocast's logits would lose the log-probabilities' precision), float64 kept.
    return logits.to(torch.promote_types(logits.dtype, torch.float32)), targets[keep], keep


def completion_loss(model, batch: dict, fast: bool, kept: KeptGrads | None = None) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens."""
    logits, targets, _ = target_logits(model, batch, fast, kept)
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def sequence_index(batch: dict) -> torch.Tensor:
    """The sequence each position belongs to: its row, or in a packed row, its example (positions restart at 0)."""
    ids = batch["input_ids"]
    if "position_ids" in batch and ids.shape[0] == 1:
        return (batch["position_ids"] == 0).cumsum(1) - 1
    return torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)


def sequence_logps(model, batch: dict, fast: bool, kept: KeptGrads | None = None) -> torch.Tensor:
    """Summed log-probability of each sequence's target tokens, in the order the batch holds the sequences."""
    logits, targets, keep = target_logits(model, batch, fast, kept)
    token_logps = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    seq = sequence_index(batch)[:, 1:][keep]
    n = int(sequence_index(batch).max()) + 1
    return torch.zeros(n, device=token_logps.device, dtype=token_logps.dtype).index_add(0, seq, token_logps)


def classifier_loss(model, batch: dict, fast: bool = False, kept: KeptGrads | None = None) -> torch.Tensor:
    """Summed cross-entropy of a classifier head's logits against each row's class.

    A classification example's labels hold its class at its last position and ``IGNORE`` elsewhere
    (:meth:`ptft.finetune.methods.Method.encode`), so it counts as one target in the step's normalisation.
    """
    inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
    logits = model(**inputs).logits
    targets = batch["labels"].max(1).values
    return torch.nn.functional.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets,
                                             reduction="sum")  # fmt: skip
