"""Attention of a packed row computed example by example, without the block mask.

A packed micro-batch (:func:`ptft.finetune.batching.collate_packed`) is one row of ``T`` tokens
from several examples. With SDPA, ``transformers`` gives it a ``T × T`` block-diagonal causal
mask, so attention costs ``T²`` per head although only the blocks on the diagonal are kept:
for eight MNLI-length examples that is eight times the attention FLOPs of padded batches.
``flash_attention_2`` avoids that on GPU with its variable-length kernel, driven by the
``cu_seq_lens_*`` arguments that the packed collator passes. This module does the same on any
device: an attention function, registered with ``transformers`` as :data:`NAME`, that runs
causal SDPA on each example's slice of the row (given by ``cu_seq_lens_q``). Calls without those
arguments (padded batches) go to the stock SDPA function with the stock SDPA mask, unchanged.

On a GPU, in half precision, the row goes through PyTorch's variable-length flash attention
(``torch.nn.attention.varlen``) in one call per layer. The per-example SDPA calls would pick
cuDNN attention there, which builds an execution plan for every new sequence length: on an
H100 that made an OLMo-1B step on MNLI-length examples take 1 s instead of 0.1 s. Where the
varlen kernel is missing, the per-example calls are kept off cuDNN.

``use_packed_attention(model)`` switches a model to it for the duration of a ``with`` block.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "ptft_packed_sdpa"
# cuDNN's SDPA backend compiles a plan per shape; every example has its own length.
PER_EXAMPLE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _find_varlen():
    """(``torch.nn.attention.varlen.varlen_attn`` if this torch has it with causal windows, else None,
    whether it takes grouped-query attention)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, False
    params = inspect.signature(varlen_attn).parameters
    if not {"window_size", "scale"} <= params.keys():
        return None, False
    return varlen_attn, "enable_gqa" in params


VARLEN_ATTN, VARLEN_GQA = _find_varlen()


def _varlen_row(query, key, value, bounds, max_length: int, scaling, gqa: bool) -> torch.Tensor:
    """``(1, T, heads, head_dim)`` causal attention of a packed row in one flash-attention call."""
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, heads, head_dim)
    bounds = bounds.to(device=query.device, dtype=torch.int32)
    gqa_arg = {"enable_gqa": True} if gqa else {}
    out = VARLEN_ATTN(q, k, v, bounds, bounds, max_length, max_length, scale=scaling, window_size=(-1, 0), **gqa_arg)
    return out.unsqueeze(0)


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``(batch, T, heads, head_dim)`` attention output, as ``transformers`` attention functions return."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    varlen = VARLEN_ATTN is not None and (VARLEN_GQA or not gqa)
    if varlen and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and not dropout:
        longest = kwargs.get("max_length_q") or int(bounds.diff().max())
        return _varlen_row(query, key, value, bounds, longest, scaling, gqa), None
    sizes = bounds.diff().tolist()
    # split, not slicing: the backward of a slice writes its gradient into a zero-filled copy of
    # the whole row, one per example, tensor and layer; split's backward is one concatenation.
    pieces = zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), strict=True)
    with sdpa_kernel(PER_EXAMPLE_BACKENDS):
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
