"""The training loop compiled (``finetune.compile``): the model's repeated blocks, and AdamW's step.

**The blocks.**

Eagerly on a GPU, a step's forward and backward spend about as long in elementwise kernels (norms,
rotary embeddings, activations, the autocast casts, each reading and writing the activations) as
in matmuls: one 480-token OLMo-1B row took 56 ms eagerly and 30 ms compiled on an H200
(``tests/benchmarks/floors.py``). ``torch.compile`` fuses them. Compiling the whole model costs
minutes and recompiles for each new row length; compiling each repeated block (the classes a
``transformers`` model lists in ``_no_split_modules``, its decoder layers) traces one block and
reuses its code for all of them ("regional compilation"), with dynamic lengths from the start.
Compiled kernels replay under CUDA graphs (:mod:`ptft.finetune.graphs`) like eager ones.

The blocks are compiled for the loop only: validation, snapshots and the saved model are the
eager model's.

**The optimizer step** (:class:`AdamWStep`). After the backward, PyTorch's own path makes three
passes over every parameter's memory: clipping scales the gradients, fused AdamW reads parameter,
gradient and both moments and writes three of them back, and zeroing writes the gradients (where
CUDA graphs add into kept gradients they are zeroed, not freed). On an H200 that was 2.8 + 12 + 1.8 ms of a 38 ms
MNLI-length OLMo-1B step. Here the clipping coefficient is applied inside the update and the
zeroing after it, in one compiled function over all parameters, so inductor makes one pass: 32
bytes a parameter instead of 44 (12.8 ms for OLMo-1B on an H100, at its copy bandwidth; see
``tests/benchmarks/bench_adamw_step.py``). The arithmetic is PyTorch's AdamW (decoupled weight
decay, bias corrections, ``eps`` outside the square root), and the state is the AdamW optimizer's
own, so a state saved by either path resumes on the other. The clipping coefficient is computed on
the device from the norm, as ``clip_grad_norm_`` computes it, so the step is queued without the
host reading the norm first; a step whose loss or norm is not finite updates nothing (the loop
raises :class:`ptft.finetune.train.Diverged` once it reads them). With bf16 copies of the matmul
weights (:mod:`ptft.finetune.bf16_weights`) the step also writes the copies. The function is written
one tensor at a time (``STEP_FORM``), which inductor makes one kernel a tensor; written with foreach
ops it wrote the copies in kernels of their own, 3 ms slower on an H100.

``auto`` compiles on a GPU; ``true`` compiles anywhere (a CPU gains little); runs that cannot
(sharded, gradient checkpointing, a model without named blocks) train eagerly, or stop with
``true``. The step is compiled where the optimizer is AdamW.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from ptft.finetune.bf16_weights import Bf16Weights
from ptft.finetune.methods import unwrap

log = logging.getLogger(__name__)

# torch.compile's backend: a test swaps in "aot_eager" (dynamo's tracing and AOTAutograd, no code generation).
BACKEND = "inductor"
# Dynamo's default recompile limit (8) counts the shapes of every block's code together.
RECOMPILE_LIMIT = 64


def blocks(model) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class ``_no_split_modules`` names (LoRA-wrapped alike)."""
    names = set(getattr(unwrap(model), "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def wanted(cfg: dict, device: torch.device) -> bool:
    """Whether ``finetune.compile`` asks for compiled blocks on ``device``."""
    setting = cfg.get("compile", False)
    return setting is True or (setting == "auto" and device.type == "cuda")


def eligible(model, cfg: dict, sharded: bool) -> str | None:
    """Why the run cannot compile its blocks, or None if it can."""
    reasons = [
        (sharded, "the run is sharded"),
        (cfg.get("gradient_checkpointing"), "gradient checkpointing is on"),
        (not blocks(model), "the model names no repeated blocks (_no_split_modules)"),
    ]
    return next((why for cond, why in reasons if cond), None)


@contextmanager
def compiled_blocks(model, desc: str):
    """Within the block, every repeated block of ``model`` runs compiled; afterwards eagerly again."""
    found = blocks(model)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in found:
        # Dynamic from the start: row lengths change every step, and a static first graph costs a
        # second compilation (half a minute for an OLMo-1B layer on an H100) at the second length.
        block.compile(backend=BACKEND, dynamic=True)
    log.info("%s: %d blocks (%s) compiled", desc, len(found), type(found[0]).__name__)
    try:
        yield found
    finally:
        for block in found:
            block._compiled_call_impl = None  # what nn.Module.compile set: calls go to the eager forward again


def _step_scalars(scalars, norm, finite, max_norm: float):
    """(lr, step size, sqrt of bias correction 2, clipping coefficient) of the step, on the device."""
    lr, step_size, bc2_sqrt = scalars.unbind()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    # A non-finite step (the loop raises Diverged after it) updates nothing: no lr, and zero gradients
    # in place of NaN ones, which would reach the weights through the moments even at lr 0.
    return lr * finite, step_size * finite, bc2_sqrt, coef


def _adamw(params, grads, exp_avgs, exp_avg_sqs, scalars, norm, finite, max_norm: float, beta1: float, beta2: float,
           eps: float, wd: float, zero_grads: bool, copies):  # fmt: skip
    """One AdamW update of every tensor on its gradient clipped by the gradients' total ``norm`` (a
    device tensor, as ``clip_grad_norm_`` computes the coefficient); ``scalars``: (lr, lr / bias
    correction 1, sqrt of bias correction 2), a device tensor, so that their values change without
    recompiling. Where ``finite`` (a device bool) is false, the weights stay as they are.
    ``copies[i]`` gets the bf16 rounding of the updated ``params[i]`` (:mod:`ptft.finetune.bf16_weights`),
    whose gradient ``grads[i]`` is then bf16."""
    lr, step_size, bc2_sqrt, coef = _step_scalars(scalars, norm, finite, max_norm)
    clipped = [torch.where(finite, g.float() * coef, 0.0) for g in grads]
    if wd:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(exp_avgs, clipped, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, clipped, clipped, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, step_size)
    torch._foreach_sub_(params, update)
    if copies:
        torch._foreach_copy_(copies, params[: len(copies)])
    if zero_grads:
        # One zero_ per tensor, not _foreach_zero_: inductor has no lowering for the latter and would
        # allocate zeros and copy them over (three passes); these fuse into the update's one.
        for grad in grads:
            grad.zero_()


def _adamw_per_tensor(params, grads, exp_avgs, exp_avg_sqs, scalars, norm, finite, max_norm: float, beta1: float,
                      beta2: float, eps: float, wd: float, zero_grads: bool, copies):  # fmt: skip
    """:func:`_adamw`'s arithmetic, op for op, one tensor at a time: inductor makes one kernel of each
    tensor's update, copy and zeroing, where the foreach form writes the copies and zeroes their gradients
    in kernels of their own after the update, which read the weights again. For OLMo-1B's step with bf16
    copies, zeroing: 12.6 ms against 15.6 on an H100 (``tests/benchmarks/bench_adamw_step.py``), the
    same weights, copies and moments bit for bit."""
    lr, step_size, bc2_sqrt, coef = _step_scalars(scalars, norm, finite, max_norm)
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)):
        clipped = torch.where(finite, g.float() * coef, 0.0)
        if wd:
            p.mul_(1 - lr * wd)
        m.lerp_(clipped, 1 - beta1)
        v.mul_(beta2)
        # addcmul_ rounds differently from _foreach_addcmul_ (1 ulp); the one-tensor list keeps the two forms equal
        torch._foreach_addcmul_([v], [clipped], [clipped], 1 - beta2)
        p.sub_(m / (v.sqrt() / bc2_sqrt + eps) * step_size)
        if i < len(copies):
            copies[i].copy_(p)
        if zero_grads:
            g.zero_()


# The compiled step's form; bench_gpu and bench_adamw_step time both.
STEP_FORMS = {"foreach": _adamw, "per_tensor": _adamw_per_tensor}
STEP_FORM = "per_tensor"


class AdamWStep:
    """``opt.step()`` of a ``torch.optim.AdamW`` on gradients scaled by the clipping coefficient, and
    optionally the gradients zeroed, compiled as one function (the module's docstring). With
    ``copies`` the gradients of the weights it holds are their bf16 copies', and the step refreshes
    the copies (:mod:`ptft.finetune.bf16_weights`)."""

    def __init__(self, opt: torch.optim.Optimizer, copies: Bf16Weights | None = None):
        self.opt = opt
        self.copies = copies
        self.update = torch.compile(STEP_FORMS[STEP_FORM], backend=BACKEND, dynamic=False)
        self.steps: int | None = None  # the optimizer's step count, read from its state once

    @staticmethod
    def usable(opt) -> bool:
        defaults = opt.defaults
        return type(opt) is torch.optim.AdamW and not (defaults.get("amsgrad") or defaults.get("maximize"))

    def holders(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """For each of ``params``, the tensor whose ``.grad`` holds its gradient."""
        return params if self.copies is None else self.copies.holders(params)

    def _state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.opt.state[p]
        if not state:  # as AdamW starts it: the step on the parameter's device where the kernel is fused
            on = p.device if group.get("fused") or group.get("capturable") else "cpu"
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=on)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, norm: torch.Tensor, max_norm: float, zero_grads: bool, finite: torch.Tensor | None = None) -> None:
        """Update every parameter with a gradient on its gradient clipped to ``max_norm`` by their total
        ``norm``, then zero the gradients (``zero_grads``: CUDA graphs add into their memory), unless
        ``finite`` is false. Neither tensor is read on the host: the update is queued without waiting."""
        finite = torch.ones((), dtype=torch.bool, device=norm.device) if finite is None else finite
        for group in self.opt.param_groups:
            pairs = [(p, h) for p, h in zip(group["params"], self.holders(group["params"]), strict=True)
                     if h.grad is not None]  # fmt: skip
            if not pairs:
                continue
            pairs.sort(key=lambda ph: ph[1] is ph[0])  # the copied weights first: copies[i] is params[i]'s
            params, grads = [p for p, _ in pairs], [h.grad for _, h in pairs]
            copies = [h for p, h in pairs if h is not p]
            states = [self._state(p, group) for p in params]
            if self.steps is None:  # one read of the saved count (a resumed run's), then counted here
                self.steps = int(states[0]["step"])
            t = self.steps + 1
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            scalars = torch.tensor([lr, lr / (1 - beta1**t), (1 - beta2**t) ** 0.5], dtype=torch.float32)
            if params[0].is_cuda:
                scalars = scalars.pin_memory()
            scalars = scalars.to(params[0].device, non_blocking=True)
            self.update(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], scalars,
                        norm, finite, float(max_norm), beta1, beta2, group["eps"], group["weight_decay"], zero_grads,
                        copies)  # fmt: skip
            torch._foreach_add_([s["step"] for s in states], 1.0)
        self.steps = (self.steps or 0) + 1
