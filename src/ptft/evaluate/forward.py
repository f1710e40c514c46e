"""The model's forward as evaluation calls it: compiled on a GPU, the last positions' logits only.

Eagerly on a GPU, a 1B model's forward over a batch of prompts spends about as long in
elementwise kernels (norms, rotary embeddings, activations, each reading and writing the
activations) as in its matmuls; ``torch.compile`` fuses them (64 prompts of 1,988 tokens on one
H200: 595 ms compiled, 717 ms eager). One compiled forward per model and process, with dynamic
shapes, so batches of every size and length share it.

``evaluate.compile`` chooses: ``auto`` compiles on a GPU (a CPU gains little and pays the
compilation), ``true`` and ``false`` force it. :func:`set_compile` records the choice on the
loaded model; a model it was not called on is treated as ``auto``.
"""

from __future__ import annotations

import inspect

import torch

from ptft.evaluate.causal_attention import use_causal_attention

COMPILE = ("auto", True, False)
# torch.compile's backend: a test swaps in "aot_eager" (dynamo's tracing without code generation).
BACKEND = "inductor"


def set_compile(model, setting: str | bool = "auto") -> None:
    """Record ``evaluate.compile`` on the loaded model (see the module's docstring)."""
    if setting not in COMPILE:
        raise ValueError(f"evaluate.compile: {setting!r} is not one of auto, true, false")
    model._ptft_compile = model.device.type == "cuda" if setting == "auto" else bool(setting)
    if spans_devices(model):  # a graph would have to cross devices; the layers run one GPU after another
        model._ptft_compile = False


def spans_devices(model) -> bool:
    """Whether ``model``'s layers lie on several devices (``evaluate.gpus`` > 1)."""
    return len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1


def compiling(model) -> bool:
    """Whether evaluation compiles ``model``'s forward (and the static decoder's steps)."""
    return getattr(model, "_ptft_compile", model.device.type == "cuda")


def forward(model):
    """``model``'s forward, compiled once per model if :func:`compiling` says so."""
    if not compiling(model):
        return model
    compiled = model.__dict__.get("_ptft_compiled")
    if compiled is None:
        use_causal_attention(model)  # unpadded or right-padded rows run SDPA's flash kernel (its module says why)
        compiled = compile_fn(model, dynamic=True)
        # Past nn.Module's __setattr__: registered, the compiled module would be a submodule of its
        # own model (state_dict, .to() and .modules() would recurse); a plain cycle is collected.
        object.__setattr__(model, "_ptft_compiled", compiled)
    return compiled


def compile_fn(fn, dynamic: bool, graphs: bool = False):
    """``torch.compile(fn)``; with ``graphs``, replayed as CUDA graphs (``mode="reduce-overhead"``) on a GPU."""
    if BACKEND != "inductor":
        return torch.compile(fn, dynamic=dynamic, backend=BACKEND)
    return torch.compile(fn, dynamic=dynamic, mode="reduce-overhead" if graphs else None)


def keeps_logits(model) -> bool:
    """Whether the forward takes ``logits_to_keep`` (compute the vocabulary projection for the last positions only)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
