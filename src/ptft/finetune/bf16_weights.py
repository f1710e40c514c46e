"""bf16 copies of the trained matmul weights, kept by the compiled AdamW step (``finetune.compile``, bf16).

With fp32 weights under autocast, every step the forward casts each ``nn.Linear`` weight to bf16
(4 bytes read, 2 written a parameter), and the backward widens its bf16 gradient to fp32 and adds
it into the fp32 ``.grad``, which the step before zeroed or freed: up to 22 bytes of memory traffic
a parameter per step besides the optimizer's own 28. A short step is bound by memory and launches,
not arithmetic (an MNLI-length OLMo-1B step: 4 ms of matmul in a 29 ms step on an H200), so those
passes are a good part of it.

Here each such weight has a bf16 copy that the module uses for the micro-batch's forward and
backward (:meth:`Bf16Weights.swapped`), its gradient stays bf16 as the matmul writes it, and the
compiled AdamW step (:class:`ptft.finetune.compiled.AdamWStep`) updates the fp32 weight and writes
its bf16 rounding into the copy in the same pass. Outside the forward and backward the modules hold
their fp32 weights as before, so the optimizer's state, saved states, resuming, probes, snapshots,
validation and the saved model are unchanged.

The arithmetic is autocast's: autocast rounds the weight to bf16 for the matmul, which is what the
copy holds, and the weight's gradient is a bf16 matmul output that the fp32 path only widens. With
one micro-batch per step the gradients are therefore the same; with more, autocast's path sums them
in fp32 where bf16 would round every partial sum, so runs with ``grad_accum`` > 1 keep fp32
gradients. Weights autocast does not cast (the embedding, norms) stay fp32, and so does a weight
two modules share (a tied LM head), which an embedding also reads. LoRA's adapters are copied too;
peft casts an adapter's input to its weight's dtype before its dropout, so with dropout the rounding
differs a little from autocast's (step losses within 5e-5, relative, on a tiny model on a CPU).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch

# bench_gpu switches this off to measure the fp32-gradient path side by side.
ENABLED = True


def eligible(cfg: dict) -> bool:
    """Whether a run with the compiled AdamW step keeps bf16 copies (the module's docstring)."""
    return ENABLED and cfg["precision"] == "bf16" and cfg["grad_accum"] == 1


class Bf16Weights:
    """The bf16 copies of a model's trained, unshared ``nn.Linear`` weights and biases."""

    def __init__(self, model: torch.nn.Module, exclude: tuple[torch.Tensor, ...] = ()):
        """``exclude``: weights whose gradient something else computes into their own ``.grad``."""
        skip = {id(e) for e in exclude}
        uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        # (module, attribute name, fp32 parameter, its bf16 copy)
        self.slots: list[tuple[torch.nn.Module, str, torch.nn.Parameter, torch.nn.Parameter]] = []
        for module in model.modules():
            if type(module) is not torch.nn.Linear:
                continue
            for name, p in module.named_parameters(recurse=False):
                if p.requires_grad and p.dtype == torch.float32 and uses[id(p)] == 1 and id(p) not in skip:
                    copy = torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=True)
                    self.slots.append((module, name, p, copy))
        self.copy_of = {id(p): copy for _, _, p, copy in self.slots}

    def __len__(self) -> int:
        return len(self.slots)

    def holders(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """For each of ``params``, the tensor whose ``.grad`` the backward writes: its copy, or itself."""
        return [self.copy_of.get(id(p), p) for p in params]

    @torch.no_grad()
    def refresh(self) -> None:
        """Round every fp32 weight into its copy (after weights were loaded or changed outside the step)."""
        torch._foreach_copy_([c for *_, c in self.slots], [p for _, _, p, _ in self.slots])

    @contextmanager
    def swapped(self):
        """Within the block the modules hold the bf16 copies; afterwards their fp32 weights again."""
        for module, name, _, copy in self.slots:
            module._parameters[name] = copy
        try:
            yield
        finally:
            for module, name, p, _ in self.slots:
                module._parameters[name] = p
