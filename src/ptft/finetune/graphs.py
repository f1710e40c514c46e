"""Short packed micro-batches replayed as CUDA graphs (``finetune.cuda_graphs``).

On a GPU, the forward and backward of a short packed row is bound by kernel launches, not by
arithmetic: eight MNLI-length examples (480 tokens) of OLMo-1B launch about 2,000 kernels and
took 56 ms eagerly on an H200 (30 ms compiled) against 4.4 ms of matmul at the measured peak
(``tests/benchmarks/floors.py``). A CUDA graph records those launches once and replays them as
one. A graph holds one shape, so a row is padded to a *bucket*:

- its length to the next multiple of :func:`bucket` tokens (at most an eighth more), the
  padding being one more packed example of pad tokens, with no target, which attends only to
  itself (variable-length attention keeps examples apart);
- its target positions to a multiple of :data:`TARGET_BUCKET`, the extra ones ignored by the
  loss (``IGNORE``).

The graph is the forward (LM head on the target positions only, as the eager fast path), the
summed cross-entropy divided by the step's target count, and the backward. Where the gradients go:

- **One micro-batch a step** (``grad_accum: 1``): each graph owns its gradients. It is captured
  with the gradients freed, so the backward writes fresh ones into the graph's memory, and a replay
  rewrites them there; :meth:`Graphs.run` hands them to the parameters' ``.grad``, and the loop frees
  them after the step as in eager training. Nothing is zeroed and nothing added into zeros: with
  bf16 gradients, 8 bytes a parameter of memory traffic less a step (zeroing writes 2; adding reads
  4 and writes 2): 1.14x the tokens/s of kept gradients, compiled OLMo-1B on MNLI-like rows on an
  H100 (docs/performance.md). Each shape holds a set of gradients, so a shape is captured only while two more
  sets fit in the free memory and the graphs' sets stay within a quarter of the GPU's memory (beyond
  it the shape runs eagerly: OLMo-1B's 2.6 GB sets allow 7 shapes on an 80 GB GPU, and MNLI-like
  rows take 4).
- **Several**: the backward adds into the parameters' gradients in place, so they are kept between
  steps and zeroed, not freed.

A shape's first micro-batch runs eagerly (that is its real update, and it warms the kernels up),
is then captured, and the capture is checked: replayed with a weight of 0 on the same inputs, it
must give the eager run's summed loss (within bf16 rounding), and its gradients are 0 (added into
kept gradients, they add nothing). A capture that fails or differs switches graphs off for the run,
with a warning, and training goes on eagerly.

Only the plain completion loss (SFT methods) in bf16, packed, on one unsharded CUDA device runs
this way; every other run is eager as before. Rows longer than :data:`MAX_TOKENS` run eagerly,
where the arithmetic hides the launches; at most :data:`MAX_GRAPHS` shapes are captured.

Measured on one H200 (OLMo-1B, MNLI-like steps of 480 tokens): 10,974 tokens/s against 6,182
eagerly; a step is then 21 ms of replayed kernels, 12 ms of AdamW, 3 ms of clipping and 2 ms of
zeroing. Two captures failed there and fell back: a tiny LLaMA's (a CPU tensor copied inside its
forward) and a 2,816-token OLMo row's; hence ``MAX_TOKENS`` and ``finetune.cuda_graphs`` off by default.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F

from ptft.finetune.batching import IGNORE
from ptft.finetune.methods import unwrap
from ptft.finetune.packed_attention import NAME, VARLEN_ATTN, VARLEN_GQA

log = logging.getLogger(__name__)

TARGET_BUCKET = 16
# bench_gpu switches this off to time graphs that add into kept gradients side by side.
OWN_GRADS = True
# The most of the GPU's memory that graphs owning their gradients hold (beyond it, new shapes run eagerly).
OWN_GRADS_SHARE = 0.25
MAX_TOKENS = 1024
MAX_GRAPHS = 48


def bucket(tokens: int) -> int:
    """The padded length of a row of ``tokens`` tokens: a multiple of 64, or of an eighth of the power of
    two below it, above ``tokens`` (one padding token at least, so every row has a padding example)."""
    step = max(64, 2 ** (max(tokens, 1).bit_length() - 4))
    return (tokens // step + 1) * step


def layout(length: int, n_bounds: int, n_targets: int) -> list[int]:
    """Sizes of a graph's inputs in their one flat buffer: ids, positions, bounds, target positions, targets."""
    return [length, length, n_bounds, n_targets, n_targets]


class Static:
    """A graph's inputs: device tensors whose addresses the graph holds, refilled before each replay."""

    def __init__(self, length: int, n_bounds: int, n_targets: int, device):
        self.length = length
        sizes = layout(length, n_bounds, n_targets)
        self.flat = torch.zeros(sum(sizes), dtype=torch.long, device=device)
        self.ids, self.positions, self.bounds, self.where, self.targets = self.flat.split(sizes)
        self.n_target = torch.ones((), dtype=torch.float32, device=device)

    def fill(self, host: torch.Tensor, n_target: float) -> None:
        self.flat.copy_(host, non_blocking=True)
        self.n_target.fill_(n_target)


def host_inputs(batch: dict, pad_id: int) -> tuple[tuple[int, int, int], torch.Tensor] | None:
    """(shape key, pinned inputs in :class:`Static`'s layout) of a packed CPU micro-batch; None if too long."""
    ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    n = ids.numel()
    length = bucket(n)
    if length > MAX_TOKENS:
        return None
    where = (labels[1:] != IGNORE).nonzero()[:, 0]
    n_targets = -(-max(where.numel(), 1) // TARGET_BUCKET) * TARGET_BUCKET
    bounds = torch.cat([batch["cu_seq_lens_q"].long(), torch.tensor([length])])
    sizes = layout(length, bounds.numel(), n_targets)
    # pinned: copied without waiting
    host = torch.zeros(sum(sizes), dtype=torch.long, pin_memory=torch.cuda.is_available())
    ids_h, pos_h, bounds_h, where_h, targets_h = host.split(sizes)
    ids_h.fill_(pad_id)
    ids_h[:n] = ids
    pos_h[:n] = positions
    pos_h[n:] = torch.arange(length - n)  # the padding example's own positions
    bounds_h.copy_(bounds)
    where_h[: where.numel()] = where
    targets_h.fill_(IGNORE)
    targets_h[: where.numel()] = labels[1:][where]
    return (length, bounds.numel(), n_targets), host


def forward_backward(model, s: Static) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, summed cross-entropy), detached, of the inputs in ``s``; the backward adds into the gradients."""
    inner = unwrap(model)
    # No autocast cache: a graph must not keep casts made outside it (nor leave its own behind).
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=s.ids.is_cuda, cache_enabled=False):
        out = inner.base_model(
            input_ids=s.ids[None],
            position_ids=s.positions[None],
            cu_seq_lens_q=s.bounds,
            cu_seq_lens_k=s.bounds,
            max_length_q=s.length,
            max_length_k=s.length,
            use_cache=False,
        )
        logits = inner.get_output_embeddings()(out.last_hidden_state[0].index_select(0, s.where))
        total = F.cross_entropy(logits.float(), s.targets, ignore_index=IGNORE, reduction="sum")
    loss = total / s.n_target
    loss.backward()
    return loss.detach(), total.detach()


def plain_completion(loss_fn) -> bool:
    """Whether ``loss_fn`` is the completion loss (a method's inherited ``Method.loss`` or the function)."""
    from ptft.finetune.loss import completion_loss
    from ptft.finetune.methods.base import Method

    return loss_fn is completion_loss or getattr(loss_fn, "__func__", None) is Method.loss


def eligible(model, cfg: dict, batching: str, fast: bool, loss_ok: bool, device, sharded: bool) -> str | None:
    """Why the run cannot use graphs, or None if it can."""
    config = unwrap(model).config
    gqa = getattr(config, "num_key_value_heads", None) not in (None, config.num_attention_heads)
    reasons = [
        (device.type != "cuda", "not on a CUDA device"),
        (cfg["precision"] != "bf16", "precision is not bf16"),
        (batching != "packed" or not fast, "batching is not packed with the LM head on targets only"),
        (not loss_ok, "the method's loss is not the plain completion loss"),
        (sharded, "the run is sharded"),
        (cfg.get("gradient_checkpointing"), "gradient checkpointing is on"),
        (getattr(config, "_attn_implementation", None) != NAME, "the model does not use ptft's packed attention"),
        (VARLEN_ATTN is None or (gqa and not VARLEN_GQA), "this torch has no variable-length flash attention"),
    ]
    return next((why for cond, why in reasons if cond), None)


class Graphs:
    """The captured shapes of one run, and :meth:`run`, which trains on a micro-batch through them."""

    def __init__(self, model, params: list[torch.Tensor], pad_id: int, desc: str, own_grads: bool = False):
        """``params``: the tensors whose ``.grad`` the backward writes. ``own_grads`` (one micro-batch a
        step): each graph writes its gradients into memory of its own (the module's docstring)."""
        self.model, self.params, self.pad_id, self.desc = model, params, pad_id, desc
        self.own_grads = own_grads
        self.set_bytes = sum(p.numel() * p.element_size() for p in params)  # one set of gradients
        # shape -> (graph, its inputs, (loss, summed loss), the gradients it writes: None where they are kept)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Static, tuple, list | None]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.off = False
        self.full = False  # no room for another graph's gradients (logged once)
        self.captured = self.replayed = 0
        self.capture_s = 0.0  # the shapes' first micro-batches (run eagerly), their capture and check

    def run(self, batch: dict, n_target: int) -> torch.Tensor | None:
        """The micro-batch's loss (its gradients added), or None where it must run eagerly."""
        if self.off:
            return None
        shaped = host_inputs(batch, self.pad_id)
        if shaped is None:
            return None
        key, host = shaped
        if key in self.graphs:
            graph, static, (loss, _), grads = self.graphs[key]
            static.fill(host, n_target)
            graph.replay()
            if grads is not None:
                for p, g in zip(self.params, grads, strict=True):
                    p.grad = g
            self.replayed += 1
            return loss.clone()
        if len(self.graphs) >= MAX_GRAPHS or (self.own_grads and not self._room()):
            return None
        t = time.perf_counter()
        loss = self._capture(key, host, n_target)
        self.capture_s += time.perf_counter() - t
        return loss

    @property
    def keeps_grads(self) -> bool:
        """Whether the gradients are kept between steps (and must be zeroed, not freed)."""
        return bool(self.graphs) and not self.own_grads

    def _room(self) -> bool:
        """Whether another graph may own a set of gradients: two more sets fit in the memory free on the
        device (one for the graph, one for the eager steps), and the graphs' sets stay within
        :data:`OWN_GRADS_SHARE` of the device's memory (the rest is the activations' of longer rows)."""
        device = self.params[0].device
        free, total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        need = self.set_bytes
        room = free > 2 * need and (len(self.graphs) + 1) * need <= OWN_GRADS_SHARE * total
        if not room and not self.full:
            self.full = True
            log.info("%s: no room on the GPU for another graph's gradients; rows of the %d shapes captured replay, "
                     "others run eagerly", self.desc, len(self.graphs))  # fmt: skip
        return room

    def _capture(self, key, host, n_target: int) -> torch.Tensor:
        device = self.params[0].device
        for p in self.params:
            if self.own_grads:  # the eager run's gradients are fresh ones, the step's own
                p.grad = None
            elif p.grad is None:  # the graph adds into the gradients' memory: they must exist before the capture
                p.grad = torch.zeros_like(p)
        static = Static(key[0], key[1], key[2], device)
        static.fill(host, n_target)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            loss, total = forward_backward(self.model, static)  # the micro-batch's own update, eagerly
        torch.cuda.current_stream(device).wait_stream(side)
        eager = [p.grad for p in self.params]
        if self.own_grads:  # freed, so that the captured backward allocates the graph's own in its memory
            for p in self.params:
                p.grad = None
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = forward_backward(self.model, static)
            grads = [p.grad for p in self.params] if self.own_grads else None
            static.n_target.fill_(math.inf)  # loss 0: the check's backward adds (or writes) exact zeros
            graph.replay()
            # Bitwise in practice; the tolerance is bf16's, for a kernel picked differently under capture.
            same = bool(torch.isclose(out[1], total, rtol=1e-3, atol=0))
        except RuntimeError as e:
            self._restore(eager)
            self._switch_off(f"capturing a row of {key[0]} tokens failed ({e})")
            return loss
        self._restore(eager)
        if not same:
            self._switch_off(f"replayed, the row's summed loss is {float(out[1])}, eagerly {float(total)}")
            return loss
        self.graphs[key] = (graph, static, out, grads)
        self.captured += 1
        log.info("%s: CUDA graph captured for rows of %d tokens, %d targets (%d shapes)", self.desc, key[0], key[2],
                 len(self.graphs))  # fmt: skip
        return loss

    def release(self) -> None:
        """Drop the captured graphs and the gradients they own (the run is over); the counts stay."""
        self.graphs.clear()
        self.pool = None

    def _restore(self, grads: list) -> None:
        """The eager run's gradients back in ``.grad``: they are this micro-batch's."""
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g

    def _switch_off(self, why: str) -> None:
        log.warning("%s: CUDA graphs off for this run, training goes on eagerly: %s", self.desc, why)
        self.off = True
        # A failed capture leaves its pool's memory reserved: measured, the eager steps after it ran out.
        self.release()
        torch.cuda.empty_cache()
