"""ptft.interpret on tiny random LLaMA, GPT-NeoX and GPT-2 causal LMs built in the test.

Each behaviour is checked against an independent computation: transformers' own hidden states and
embeddings for the residual stream, and forward pre-hooks on the MLP out-projection (its input is
the MLP's hidden activation) for neuron zeroing and the |activation × gradient| scores.
"""

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from ptft.interpret.layers import blocks, mlp_outputs, residual_stream
from ptft.interpret.linear_probe import fit_probe, probe_layers, probe_predictions
from ptft.interpret.pruning import neuron_scores, top_neurons, zeroed_neurons

VOCAB = 50
LAYOUTS = ("llama", "gpt_neox", "gpt2")


def tiny_model(layout: str) -> nn.Module:
    """A random two-layer causal LM (hidden 32, MLP 64, seed 0) with dropout, in training mode."""
    torch.manual_seed(0)
    if layout == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                             attention_dropout=0.2, initializer_range=0.2)  # fmt: skip
        model = LlamaForCausalLM(config)
    elif layout == "gpt_neox":
        config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=64, hidden_dropout=0.2,
                               attention_dropout=0.2, initializer_range=0.2)  # fmt: skip
        model = GPTNeoXForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=64,
                            initializer_range=0.2)  # fmt: skip
        model = GPT2LMHeadModel(config)
    return model.train()


def parts(model, layout: str):
    """(embedding of ids at all positions, final norm, out-projection modules), read off each layout by hand."""
    if layout == "llama":
        embed = model.model.embed_tokens
        return embed, model.model.norm, [b.mlp.down_proj for b in model.model.layers]
    if layout == "gpt_neox":
        embed = model.gpt_neox.embed_in
        return embed, model.gpt_neox.final_layer_norm, [b.mlp.dense_4h_to_h for b in model.gpt_neox.layers]

    def embed(ids):
        return model.transformer.wte(ids) + model.transformer.wpe(torch.arange(ids.shape[1]))

    return embed, model.transformer.ln_f, [b.mlp.c_proj for b in model.transformer.h]


def batch(seed: int, rows: int = 3, length: int = 7, pad: int = 0) -> dict[str, torch.Tensor]:
    """Random ids, right-padded with ``pad`` extra positions of random ids (mask 0, labels -100).

    The first ``length`` ids of a row do not depend on ``pad``.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(VOCAB, (rows, length), generator=g), torch.randint(VOCAB, (rows, pad))], dim=1)
    mask = torch.ones(rows, length + pad, dtype=torch.long)
    mask[:, length:] = 0
    labels = ids.clone()
    labels[:, length:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(params=LAYOUTS)
def layout(request):
    return request.param


def test_layout(layout):
    model = tiny_model(layout)
    _, _, projections = parts(model, layout)
    outs = mlp_outputs(model)
    assert len(blocks(model)) == 2 and [o.layer for o in outs] == [0, 1]
    for out, module in zip(outs, projections, strict=True):
        assert out.weight is module.weight
        assert out.n_neurons == 64
        assert out.weight.shape[1 - out.neuron_dim] == 32
    assert outs[0].neuron_dim == (0 if layout == "gpt2" else 1)


def test_residual_stream(layout):
    model = tiny_model(layout)
    embed, final_norm, _ = parts(model, layout)
    b = batch(1, rows=4, length=6, pad=2)
    positions = torch.tensor([5, 0, 3, -3])
    stream = residual_stream(model, b["input_ids"], b["attention_mask"], positions)
    assert stream.shape == (3, 4, 32) and stream.dtype == torch.float32
    assert model.training  # restored

    model.eval()
    with torch.no_grad():
        hidden = model(**{k: b[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True).hidden_states
        rows = torch.arange(4)
        at = [h[rows, positions] for h in hidden]
        torch.testing.assert_close(stream[0], embed(b["input_ids"])[rows, positions])
        torch.testing.assert_close(stream[1], at[1])
        # transformers' last hidden state is final-normed; ours is the raw output of the last block.
        assert not torch.allclose(stream[-1], at[-1], atol=1e-3)
        torch.testing.assert_close(final_norm(stream[-1]), at[-1])


def hidden_hooks(projections, neurons=None, keep=None):
    """Forward pre-hooks on the out-projections: zero the activations of ``neurons``, or keep the activations."""

    def hook(layer):
        def pre(_module, args):
            a = args[0]
            if keep is not None:
                a.retain_grad()
                keep.append(a)
            if neurons is not None:
                a = a.clone()
                a[..., [n for at, n in neurons if at == layer]] = 0
                return (a,)

        return pre

    return [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(projections)]


def test_zeroed_neurons(layout):
    model = tiny_model(layout).eval()
    _, _, projections = parts(model, layout)
    b = batch(2)
    neurons = [(0, 3), (0, 17), (1, 0), (1, 63), (1, 3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base = model(input_ids=b["input_ids"]).logits
        with zeroed_neurons(model, neurons):
            ours = model(input_ids=b["input_ids"]).logits
        handles = hidden_hooks(projections, neurons=neurons)
        try:
            reference = model(input_ids=b["input_ids"]).logits
        finally:
            for h in handles:
                h.remove()
    assert not torch.allclose(ours, base, atol=1e-4)
    torch.testing.assert_close(ours, reference)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    with pytest.raises(RuntimeError, match="boom"), zeroed_neurons(model, neurons):
        raise RuntimeError("boom")
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="64 neurons"), zeroed_neurons(model, [(0, 64)]):
        pass


def test_neuron_scores(layout):
    model = tiny_model(layout)  # training mode, with dropout: scores must come from eval mode
    _, _, projections = parts(model, layout)
    batches = [batch(3, rows=2, length=6), batch(4, rows=3, length=6)]
    batches[1]["labels"][0, :4] = -100
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = neuron_scores(model, batches)
    assert [s.shape for s in scores] == [(64,), (64,)]
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # Independently: |Σ_t a_n(t) ∂L/∂a_n(t)| from the MLP activations (the out-projection's input).
    model.eval()
    kept = []
    handles = hidden_hooks(projections, keep=kept)
    try:
        loss = sum(model(**b).loss for b in batches)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    reference = [
        sum((a * a.grad).sum(dim=(0, 1)) for a in kept[layer :: len(projections)]).abs()
        for layer in range(len(projections))
    ]
    for ours, ref in zip(scores, reference, strict=True):
        # Summation order differs between the two (float32; 1.3e-8 apart on one CPU where 1e-8 was allowed).
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)

    # Padding (mask 0, labels -100) adds nothing.
    padded = [batch(3, rows=2, length=6, pad=3), batch(4, rows=3, length=6, pad=2)]
    padded[1]["labels"][0, :4] = -100
    for ours, again in zip(scores, neuron_scores(model, padded), strict=True):
        torch.testing.assert_close(again, ours, rtol=1e-4, atol=1e-7)

    with pytest.raises(ValueError, match="no scored token"):
        neuron_scores(model, [{**batches[0], "labels": torch.full_like(batches[0]["labels"], -100)}])
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_top_neurons():
    scores = [torch.tensor([0.1, 5.0, 2.0, 2.0]), torch.tensor([2.0, 7.0, 0.0])]
    assert top_neurons(scores, 1) == [(1, 1)]
    assert top_neurons(scores, 5) == [(1, 1), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert top_neurons(scores, 0) == []
    assert top_neurons(scores, 7)[-1] == (1, 2)
    with pytest.raises(ValueError, match="k: expected"):
        top_neurons(scores, 8)


def planted(n: int, seed: int):
    """Three classes separated along a planted direction each, in 16 dimensions with noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    centers = 4 * torch.eye(3, 16)
    return centers[y] + torch.randn(n, 16, generator=g), y


FIT = {"iters": 300, "lr": 1e-2, "batch_size": 32, "seed": 0}


def test_fit_probe():
    x, y = planted(300, 0)
    x_test, y_test = planted(200, 1)
    probe = fit_probe(x, y, 3, **FIT)
    accuracy = (probe_predictions(probe, x_test) == y_test).float().mean().item()
    assert accuracy > 0.95
    again = fit_probe(x, y, 3, **FIT)
    assert torch.equal(probe.weight, again.weight) and torch.equal(probe.bias, again.bias)
    other = fit_probe(x, y, 3, **{**FIT, "seed": 1})
    assert not torch.equal(probe.weight, other.weight)
    with pytest.raises(ValueError, match="class ids"):
        fit_probe(x, y + 1, 3, **FIT)


def test_probe_layers():
    model = tiny_model("llama")
    b = batch(5, rows=40, length=5)
    positions = torch.full((40,), 4)
    features = residual_stream(model, b["input_ids"], b["attention_mask"], positions)
    y = b["input_ids"][:, 4] % 2  # the last token's parity: readable from the embedding
    rows = probe_layers(features[:, :30], y[:30], features[:, 30:], y[30:], 2, **FIT)
    assert [r["layer"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["n"] == 10 and len(r["correct"]) == 10
        assert r["accuracy"] == pytest.approx(sum(r["correct"]) / 10)


def test_unsupported_models():
    with pytest.raises(ValueError, match="Sequential"):
        blocks(nn.Sequential(nn.Linear(2, 2)))
    bert = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64))  # fmt: skip
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        mlp_outputs(bert)
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        residual_stream(bert, torch.zeros(1, 3, dtype=torch.long), None, torch.tensor([0]))


def test_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    base = model.get_base_model()
    assert [o.weight for o in mlp_outputs(model)] == [b.mlp.down_proj.weight for b in base.model.layers]
    b = batch(6)
    scores = neuron_scores(model, [b])
    assert len(scores) == 2 and all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()].count(True) == 8  # LoRA A and B of two modules, two layers
    wrapped = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["down_proj"]))
    with pytest.raises(ValueError, match="peft adapter"):
        mlp_outputs(wrapped)


class _KeywordBlock(nn.Module):
    """A block called with ``hidden_states=`` as a keyword that returns a tuple, as some layouts do."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.down_proj = nn.Linear(8, 4)

    def forward(self, hidden_states):
        return (hidden_states + self.mlp.down_proj(torch.ones(8)), None)


class _KeywordModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.layers = nn.ModuleList([_KeywordBlock(), _KeywordBlock()])

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        h = self.embed(input_ids)
        outs = [h]
        for block in self.layers:
            h = block(hidden_states=h)[0]
            outs.append(h)
        return outs


def test_keyword_inputs_and_tuple_outputs():
    model = _KeywordModel()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    positions = torch.tensor([2, 1])
    stream = residual_stream(model, ids, None, positions)
    with torch.no_grad():
        expected = torch.stack([h[torch.arange(2), positions] for h in model(ids)])
    torch.testing.assert_close(stream, expected)
    assert [o.neuron_dim for o in mlp_outputs(model)] == [1, 1]
