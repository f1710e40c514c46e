"""Attention of a packed row computed example by example, without the block mask (CPU).

A packed micro-batch (:func:`ptft.finetune.batching.collate_packed`) is one row of ``T`` tokens
from several examples. With SDPA, ``transformers`` gives it a ``T × T`` block-diagonal causal
mask, so attention costs ``T²`` per head although only the blocks on the diagonal are kept:
for eight MNLI-length examples that is eight times the attention FLOPs of padded batches.
``flash_attention_2`` avoids that on GPU with its variable-length kernel, driven by the
``cu_seq_lens_*`` arguments that the packed collator passes. This module does the same on any
device: an attention function, registered with ``transformers`` as :data:`NAME`, that runs
causal SDPA on each example's slice of the row (given by ``cu_seq_lens_q``). Calls without those
arguments (padded batches) go to the stock SDPA function with the stock SDPA mask, unchanged.

``use_packed_attention(model)`` switches a model to it for the duration of a ``with`` block.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "ptft_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``(batch, T, heads, head_dim)`` attention output, as ``transformers`` attention functions return."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    sizes = bounds.diff().tolist()
    # split, not slicing: the backward of a slice writes its gradient into a zero-filled copy of
    # the whole row, one per example, tensor and layer; split's backward is one concatenation.
    pieces = zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), strict=True)
    out = torch.cat(
        [F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
         for q, k, v in pieces],
        dim=2,
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa_attention)
# Padded batches (validation, probes) still get SDPA's masks.
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def use_packed_attention(model):
    """Run ``model`` with :data:`NAME` if it uses SDPA; any other implementation is left as it is."""
    config = model.config
    before = getattr(config, "_attn_implementation", None)
    if before != "sdpa":
        yield False
        return
    model.set_attn_implementation(NAME)
    try:
        yield True
    finally:
        model.set_attn_implementation(before)
