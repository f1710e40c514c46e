"""The model's repeated blocks compiled one by one for the training loop (``finetune.compile``).

Eagerly on a GPU, a step's forward and backward spend about as long in elementwise kernels (norms,
rotary embeddings, activations, the autocast casts, each reading and writing the activations) as
in matmuls: one 480-token OLMo-1B row took 56 ms eagerly and 30 ms compiled on an H200
(``tests/benchmarks/floors.py``). ``torch.compile`` fuses them. Compiling the whole model costs
minutes and recompiles for each new row length; compiling each repeated block (the classes a
``transformers`` model lists in ``_no_split_modules``, its decoder layers) traces one block and
reuses its code for all of them ("regional compilation"), with dynamic lengths after the second
shape. Compiled kernels replay under CUDA graphs (:mod:`ptft.finetune.graphs`) like eager ones.

The blocks are compiled for the loop only: validation, snapshots and the saved model are the
eager model's. ``auto`` compiles on a GPU; ``true`` compiles anywhere (a CPU gains little); runs
that cannot (sharded, gradient checkpointing, a model without named blocks) train eagerly, or stop
with ``true``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

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
        block.compile(backend=BACKEND)
    log.info("%s: %d blocks (%s) compiled", desc, len(found), type(found[0]).__name__)
    try:
        yield found
    finally:
        for block in found:
            block._compiled_call_impl = None  # what nn.Module.compile set: calls go to the eager forward again
