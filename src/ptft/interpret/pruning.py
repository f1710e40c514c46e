"""One-shot pruning of MLP neurons ranked by |weight × gradient| of their output projection.

Jain et al. (2024) prune the neurons whose removal most changes the loss on a task and ask how
much of a capability survives. Removing neuron n of a block's MLP is zeroing its out-projection
weights (one slice of :attr:`MlpOut.weight`); the first-order Taylor estimate of the loss change
(Molchanov et al., 2017) is

    score(l, n) = | Σ_j W[j, n] · ∂L/∂W[j, n] |  =  | Σ_t a_n(t) · ∂L/∂a_n(t) |,

with ``W`` block l's out-projection, ``a_n(t)`` the neuron's activation at token t and ``L`` the
sum over the batches of each batch's mean token cross-entropy (``transformers``' causal-LM loss:
labels shifted by one, -100 not scored). That is Jain et al.'s ranking (``magnitude``). Without the
absolute value, Σ_j W[j, n] · ∂L/∂W[j, n] is the first-order *decrease* of L when the neuron is
zeroed (the loss changes by about −Σ_j W ∂L/∂W), and ranking by it (``decrease``) picks only the
neurons whose removal should lower L: on a fine-tuned model and the pre-training task's loss, the
ones that stand between the model and its pre-training answer. The weight form needs gradients of the out-projections
only, accumulated in their ``.grad`` over the batches, so no activation is kept.

:func:`zeroed_neurons` removes neurons for the length of a ``with`` block and puts the exact
weights back afterwards; the out-projection's bias is not per neuron and stays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from ptft.finetune.methods.base import unwrap
from ptft.interpret.layers import MlpOut, mlp_outputs

RANKINGS = ("magnitude", "decrease")


def neuron_scores(model, batches: Iterable[Mapping[str, torch.Tensor]], ranking: str = "magnitude"
                  ) -> list[torch.Tensor]:  # fmt: skip
    """|weight × gradient| of every MLP neuron (``ranking`` magnitude; ``decrease``: without the absolute
    value): one float32 CPU tensor (n_neurons,) per block."""
    return ranked(first_order_decrease(model, batches), ranking)


def ranked(decrease: list[torch.Tensor], ranking: str) -> list[torch.Tensor]:
    """The scores of a ranking from :func:`first_order_decrease`."""
    if ranking not in RANKINGS:
        raise ValueError(f"mechanistic.pruning.rankings: {ranking!r} is not one of {', '.join(RANKINGS)}")
    return [d.abs() for d in decrease] if ranking == "magnitude" else [d.clone() for d in decrease]


def first_order_decrease(model, batches: Iterable[Mapping[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Σ_j W[j, n] · ∂L/∂W[j, n] of every MLP neuron: one float32 CPU tensor (n_neurons,) per block.

    A batch is a dict of ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not scored).
    The model runs in eval mode (no dropout); afterwards its weights, ``requires_grad`` flags,
    ``.grad`` fields and training flags are as they were.
    """
    model = unwrap(model)
    outs = mlp_outputs(model)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    saved_grads = {id(o.weight): o.weight.grad for o in outs}
    modes = [(m, m.training) for m in model.modules()]
    device = outs[0].weight.device
    n_batches = 0
    try:
        # Only the out-projections need a gradient: activations still carry one back to them from the loss.
        for p in params:
            p.requires_grad_(False)
        for o in outs:
            o.weight.requires_grad_(True)
            o.weight.grad = None
        model.eval()
        with torch.enable_grad():
            for i, batch in enumerate(batches):
                labels = batch["labels"]
                # transformers shifts the labels: token t is scored on labels[t + 1].
                if not (labels[..., 1:] != -100).any():
                    raise ValueError(f"batch {i}: no scored token (every label after the first is -100)")
                loss = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=None if batch.get("attention_mask") is None else batch["attention_mask"].to(device),
                    labels=labels.to(device),
                    use_cache=False,
                ).loss
                loss.backward()
                n_batches += 1
        if n_batches == 0:
            raise ValueError("neuron_scores: no batches")
        return [_taylor(o) for o in outs]
    finally:
        for o in outs:
            o.weight.grad = saved_grads[id(o.weight)]
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        for module, training in modes:
            module.training = training


def _taylor(out: MlpOut) -> torch.Tensor:
    w, g = out.weight.detach().float(), out.weight.grad.float()
    return (w * g).sum(dim=1 - out.neuron_dim).cpu()


def top_neurons(scores: list[torch.Tensor], k: int) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring (layer, neuron) pairs over all layers, highest first, ties in (layer, neuron) order."""
    if not scores:
        raise ValueError("top_neurons: no layers")
    flat = torch.cat([s.detach().float().cpu().reshape(-1) for s in scores])
    if not torch.isfinite(flat).all():
        raise ValueError("top_neurons: a score is NaN or infinite")
    if not 0 <= k <= flat.numel():
        raise ValueError(f"k: expected 0..{flat.numel()} (the number of neurons), got {k}")
    pairs = [(layer, n) for layer, s in enumerate(scores) for n in range(s.numel())]
    # A stable sort keeps equal scores in their (layer, neuron) order.
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    return [pairs[i] for i in order.tolist()]


@contextmanager
def zeroed_neurons(model, neurons: Iterable[tuple[int, int]]) -> Iterator[None]:
    """Zero the out-projection weights of the (layer, neuron) pairs in place; restore them exactly on exit."""
    outs = mlp_outputs(model)
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in neurons:
        if not 0 <= layer < len(outs):
            raise ValueError(f"neuron ({layer}, {neuron}): no layer {layer}; the model has {len(outs)}")
        if not 0 <= neuron < outs[layer].n_neurons:
            raise ValueError(f"neuron ({layer}, {neuron}): layer {layer} has {outs[layer].n_neurons} neurons")
        by_layer.setdefault(layer, []).append(neuron)

    saved = []
    try:
        with torch.no_grad():
            for layer, index in by_layer.items():
                out = outs[layer]
                where = out.neuron_slice(torch.tensor(sorted(set(index)), device=out.weight.device))
                saved.append((out, where, out.weight[where].clone()))
                out.weight[where] = 0
        yield
    finally:
        with torch.no_grad():
            for out, where, values in reversed(saved):
                out.weight[where] = values
