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

Zeroing those buffers is lazy, because a 150 MB fill per weight per step is itself a cost: after
``zero_grad`` a buffer is *stale* (logically zero, physically last step's values). The head's
first write of a step overwrites it (``addmm_`` with ``beta=0``, reading nothing); the
embedding's first write zeroes only the rows written since the last real zeroing (an untied
embedding's gradient is non-zero only on the step's token ids) and then adds. ``settle()``,
called before the gradients are read, zeroes a buffer nothing wrote this step.

The weight's own accumulator never fires: gradient hooks on these two weights would not run,
which nothing in ptft uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _Buffer:
    """One weight's kept gradient and what is known of its stale content."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.stale = False
        self.dirty_rows: list[torch.Tensor] | None = []  # rows that may be non-zero; None: any

    @property
    def grad(self) -> torch.Tensor:
        if self.weight.grad is None:
            self.weight.grad = torch.zeros_like(self.weight)
            self.stale, self.dirty_rows = False, []
        return self.weight.grad

    def add_rows(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        grad = self.grad
        if self.stale:
            if self.dirty_rows is None:
                grad.zero_()
            elif self.dirty_rows:
                grad.index_fill_(0, torch.cat(self.dirty_rows).unique(), 0.0)
            self.stale, self.dirty_rows = False, []
        grad.index_add_(0, ids, rows.to(grad.dtype))
        if self.dirty_rows is not None:
            self.dirty_rows.append(ids)

    def add_dense(self, a: torch.Tensor, b: torch.Tensor) -> None:
        grad = self.grad
        grad.addmm_(a.to(grad.dtype), b.to(grad.dtype), beta=0.0 if self.stale else 1.0)
        self.stale, self.dirty_rows = False, None

    def settle(self) -> None:
        if self.stale and self.weight.grad is not None:
            self.weight.grad.zero_()
            self.stale, self.dirty_rows = False, []


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx, buffer):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.buffer = padding_idx, buffer
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        ids = ids.reshape(-1)
        if ctx.padding_idx is not None:  # nn.Embedding never updates its padding row
            keep = ids != ctx.padding_idx
            ids, flat = ids[keep], flat[keep]
        ctx.buffer.add_rows(ids, flat)
        return None, None, None, None


class _Head(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, buffer):
        ctx.save_for_backward(hidden)
        ctx.weight, ctx.buffer = weight, buffer
        return hidden @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        (hidden,) = ctx.saved_tensors
        ctx.buffer.add_dense(grad.t(), hidden)
        return grad @ ctx.weight.to(grad.dtype), None, None


class KeptGrads:
    """The model's input-embedding and LM-head weights, when both are plain and trained.

    ``embed(ids)`` and ``head(hidden)`` replace the modules' calls in the loss;
    ``zero_grad(params)`` replaces freeing the gradients of ``params``; ``settle()`` goes between the last backward
    and whatever reads the gradients (clipping, the optimizer).
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
        # A tied head and embedding share one weight, hence one buffer.
        buffers = {id(w): _Buffer(w) for w in (self.embedding.weight, self.lm_head.weight)}
        self.buffers = list(buffers.values())
        self._embed_buffer, self._head_buffer = buffers[id(self.embedding.weight)], buffers[id(self.lm_head.weight)]

    def weights(self) -> tuple[torch.Tensor, ...]:
        """The weights whose gradients this computes into their own ``.grad``."""
        return tuple(b.weight for b in self.buffers)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return _Embedding.apply(ids, self.embedding.weight, self.embedding.padding_idx, self._embed_buffer)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return _Head.apply(hidden, self.lm_head.weight, self._head_buffer)

    def zero_grad(self, params: list[torch.Tensor]) -> None:
        kept = [(b, b.weight.grad) for b in self.buffers]
        for p in params:
            p.grad = None
        for b, grad in kept:
            b.weight.grad = grad
            b.stale = grad is not None

    def settle(self) -> None:
        for b in self.buffers:
            b.settle()
