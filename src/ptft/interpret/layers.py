"""The transformer blocks of a causal LM, its MLPs' output projections, and the residual stream between blocks.

The analyses read every layer of models of several families, so the layout is found from the
module structure rather than from a list of class names:

- the **blocks** are the ``layers`` (LLaMA, Mistral, Qwen2, OLMo, OLMo-2, GPT-NeoX) or ``h``
  (GPT-2, GPT-Neo) module list of the model's base model (``model.model``, ``model.gpt_neox``,
  ``model.transformer``: ``transformers``' ``base_model``);
- each block's **MLP output projection** is ``mlp.down_proj`` (LLaMA family), ``mlp.dense_4h_to_h``
  (GPT-NeoX), ``mlp.c_proj`` of GPT-Neo, each an ``nn.Linear`` with weight (d_model, d_mlp), or
  ``mlp.c_proj`` of GPT-2, a ``Conv1D`` whose weight is stored transposed, (d_mlp, d_model).
  :class:`MlpOut` records which axis indexes the MLP's hidden neurons, so a neuron is one slice of
  the weight in either layout.

A ``peft`` model is unwrapped with ``get_base_model()`` (its LoRA layers stay in place). An
out-projection that carries a LoRA adapter itself is refused: its neuron's contribution is no
longer one slice of one weight.

:func:`residual_stream` captures the blocks' inputs and outputs with hooks instead of using
``output_hidden_states``: ``transformers`` replaces the last hidden state by the final-normed one,
which is not the residual stream the probes of the paper read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptft.finetune.methods.base import unwrap

# Attribute names, looked for in this order; the first present wins.
BLOCK_LISTS = ("layers", "h")
MLP_OUT_PROJECTIONS = ("down_proj", "dense_4h_to_h", "c_proj")


def _base(model) -> nn.Module:
    """The transformers base model (the stack of blocks) of a causal LM, a ``peft`` wrapper or a base model."""
    model = unwrap(model)
    base = getattr(model, "base_model", None)
    # PreTrainedModel.base_model is the model itself for a base model without a head.
    return base if isinstance(base, nn.Module) else model


def blocks(model) -> list[nn.Module]:
    """The transformer blocks of ``model``, in order (input side first)."""
    base = _base(model)
    for name in BLOCK_LISTS:
        found = getattr(base, name, None)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return list(found)
    raise ValueError(
        f"{type(unwrap(model)).__name__}: unsupported model layout; looked for a non-empty ModuleList "
        f"{' or '.join(BLOCK_LISTS)} on its base model ({type(base).__name__}); supported: the LLaMA family "
        "(model.layers), GPT-NeoX (gpt_neox.layers) and GPT-2 (transformer.h)"
    )


@dataclass(frozen=True)
class MlpOut:
    """The output projection of block ``layer``'s MLP; ``weight[neuron_dim=n]`` is hidden neuron n's output weights.

    ``neuron_dim`` is 1 for an ``nn.Linear`` (weight (d_model, d_mlp)) and 0 for GPT-2's ``Conv1D``
    (weight (d_mlp, d_model)).
    """

    layer: int
    weight: nn.Parameter
    neuron_dim: int

    @property
    def n_neurons(self) -> int:
        return self.weight.shape[self.neuron_dim]

    def neuron_slice(self, neurons) -> tuple:
        """An index of ``weight`` selecting the out-projection weights of ``neurons`` (an int, a list or a tensor)."""
        return (slice(None), neurons) if self.neuron_dim == 1 else (neurons,)


def _neuron_dim(module: nn.Module, model_name: str, path: str) -> int:
    from transformers.pytorch_utils import Conv1D

    if hasattr(module, "base_layer") or hasattr(module, "lora_A"):
        raise ValueError(
            f"{model_name}.{path} carries a peft adapter ({type(module).__name__}): a neuron's output is no longer "
            "one slice of one weight; merge the adapter first (merge_and_unload)"
        )
    if isinstance(module, Conv1D):
        return 0  # x @ weight + bias: weight is (in = d_mlp, out = d_model)
    if isinstance(module, nn.Linear):
        return 1  # x @ weight.T + bias: weight is (out = d_model, in = d_mlp)
    raise ValueError(f"{model_name}.{path} is a {type(module).__name__}; expected nn.Linear or transformers' Conv1D")


def mlp_outputs(model) -> list[MlpOut]:
    """The MLP output projection of every block (:func:`blocks`), in order."""
    model_name = type(unwrap(model)).__name__
    out = []
    for i, block in enumerate(blocks(model)):
        mlp = getattr(block, "mlp", None)
        name = next((n for n in MLP_OUT_PROJECTIONS if isinstance(getattr(mlp, n, None), nn.Module)), None)
        if name is None:
            raise ValueError(
                f"{model_name}: block {i} ({type(block).__name__}) has no MLP output projection; looked for "
                f"block.mlp.{{{', '.join(MLP_OUT_PROJECTIONS)}}}"
            )
        module = getattr(mlp, name)
        out.append(MlpOut(i, module.weight, _neuron_dim(module, model_name, f"block {i} mlp.{name}")))
    return out


def _first_tensor(output) -> torch.Tensor:
    """The hidden states a block returns: the tensor itself, or the first item of a tuple (older layouts)."""
    return output if isinstance(output, torch.Tensor) else output[0]


@torch.no_grad()
def residual_stream(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor):
    """The raw residual stream at one position per row: float32 on the CPU, (n_blocks + 1, batch, d_model).

    Entry 0 is the input to block 0 (the embeddings, with GPT-2's position embeddings), entry i the
    output of block i - 1, before any final layer norm. ``positions`` (batch,) indexes the sequence
    of each row (negative indices count from the end of the padded row). The model runs in eval
    mode (no dropout); each module's training flag is restored afterwards.
    """
    model = unwrap(model)
    stack = blocks(model)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected (batch, seq), got shape {tuple(input_ids.shape)}")
    batch, seq = input_ids.shape
    positions = torch.as_tensor(positions, dtype=torch.long)
    if positions.shape != (batch,):
        raise ValueError(f"positions: expected shape ({batch},), got {tuple(positions.shape)}")
    if ((positions < -seq) | (positions >= seq)).any():
        raise ValueError(f"positions: an index out of range for sequences of length {seq}: {positions.tolist()}")

    captured: dict[int, torch.Tensor] = {}

    def keep(index: int, hidden: torch.Tensor) -> None:
        rows = torch.arange(batch, device=hidden.device)
        captured[index] = hidden[rows, positions.to(hidden.device)].detach().float().cpu()

    def block_input(_module, args, kwargs):
        # transformers 5's decoders pass hidden_states positionally; accept the keyword too.
        keep(0, args[0] if args else kwargs["hidden_states"])

    def block_output(index):
        return lambda _module, _args, output: keep(index, _first_tensor(output))

    modes = [(m, m.training) for m in model.modules()]
    handles = [stack[0].register_forward_pre_hook(block_input, with_kwargs=True)]
    try:
        handles += [block.register_forward_hook(block_output(i + 1)) for i, block in enumerate(stack)]
        model.eval()
        device = next(model.parameters()).device
        mask = None if attention_mask is None else attention_mask.to(device)
        # The base model, without the LM head: over a large vocabulary the logits are the largest tensor, and unused.
        _base(model)(input_ids=input_ids.to(device), attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    if sorted(captured) != list(range(len(stack) + 1)):
        raise RuntimeError(f"captured the residual stream at {sorted(captured)}; expected 0..{len(stack)}")
    return torch.stack([captured[i] for i in range(len(stack) + 1)])
