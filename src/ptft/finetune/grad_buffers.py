"""Vocabulary-sized weight gradients added in place into buffers kept across steps (CPU).

For the input embedding and the LM head, autograd allocates a fresh dense
``vocab × hidden`` gradient every step (150 MB each for Pythia-160m, 400 MB for OLMo-1B)
and the accumulator adopts it as ``.grad``. On CPU every such allocation is new memory that
the kernel has to fault in page by page: measured here at about 0.3 s per step, 10 % of a
Pythia-160m step, for memory that holds the same shape every time. These two autograd
functions write those gradients straight into the parameter's ``.grad`` (``index_add_`` /
``addmm_``), and :class:`KeptGrads` zeroes that buffer in place between steps instead of
dropping it. The values are the ones autograd computes (a test compares them). CUDA's
caching allocator already reuses memory, so the trainer uses this on CPU only.

The weight's own accumulator never fires: gradient hooks on these two weights would not run,
which nothing in ptft uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _grad_buffer(weight: torch.Tensor) -> torch.Tensor:
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    return weight.grad


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        ids = ids.reshape(-1)
        if ctx.padding_idx is not None:  # nn.Embedding never updates its padding row
            keep = ids != ctx.padding_idx
            ids, flat = ids[keep], flat[keep]
        _grad_buffer(ctx.weight).index_add_(0, ids, flat.to(ctx.weight.dtype))
        return None, None, None


class _Head(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight):
        ctx.save_for_backward(hidden)
        ctx.weight = weight
        return hidden @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        (hidden,) = ctx.saved_tensors
        weight = ctx.weight
        _grad_buffer(weight).addmm_(grad.t().to(weight.dtype), hidden.to(weight.dtype))
        return grad @ weight.to(grad.dtype), None


class KeptGrads:
    """The model's input-embedding and LM-head weights, when both are plain and trained.

    ``embed(ids)`` and ``head(hidden)`` replace the modules' calls in the loss;
    ``zero_grad(opt)`` replaces ``opt.zero_grad``.
    """

    def __init__(self, model):
        self.embedding = model.get_input_embeddings()
        self.lm_head = model.get_output_embeddings()
        self.active = (
            type(self.embedding) is torch.nn.Embedding
            and type(self.lm_head) is torch.nn.Linear
            and self.lm_head.bias is None
            and self.embedding.weight.requires_grad
            and self.lm_head.weight.requires_grad
            and self.embedding.max_norm is None
            and not self.embedding.scale_grad_by_freq
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return _Embedding.apply(ids, self.embedding.weight, self.embedding.padding_idx)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return _Head.apply(hidden, self.lm_head.weight)

    def zero_grad(self, opt: torch.optim.Optimizer) -> None:
        kept = [(p, p.grad) for p in {id(w): w for w in (self.embedding.weight, self.lm_head.weight)}.values()]
        opt.zero_grad(set_to_none=True)
        for p, grad in kept:
            if grad is not None:
                p.grad = grad.zero_()
