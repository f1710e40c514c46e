"""Compiled evaluation forwards leave a plain causal mask to SDPA (ptft.evaluate.causal_attention).

The traced graphs are read through a backend that records them. Where transformers' SDPA mask
cannot tell while tracing that it may be left out (patched in, as older versions do), stock SDPA
gets a mask for every attention call even of unpadded rows; :data:`NAME` gives those calls no mask
and ``is_causal``, and the logits stay the eager model's.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from ptft.evaluate import causal_attention
from ptft.evaluate.causal_attention import NAME, causal_sdpa_mask, use_causal_attention
from ptft.evaluate.generate import right_padded


def attention_calls(model, **inputs) -> tuple[list[dict], torch.Tensor]:
    """The keyword arguments of every SDPA call in ``model``'s forward as dynamo traces it, and its logits."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    logits = torch.compile(model, backend=record, dynamic=False)(**inputs).logits
    calls = [n.kwargs for gm in graphs for n in gm.graph.nodes if "scaled_dot_product_attention" in str(n.target)]
    return calls, logits


@pytest.fixture
def model(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()


def test_the_mask_is_left_to_sdpa_only_where_it_is_plain_causal(monkeypatch):
    # As while tracing: SDPA's own mask function never leaves the mask out.
    monkeypatch.setattr("transformers.masking_utils._ignore_causal_mask_sdpa", lambda *a, **k: False)
    args = {"batch_size": 2, "q_length": 5, "kv_length": 5, "q_offset": 0, "kv_offset": 0, "device": "cpu"}
    assert causal_sdpa_mask(**args) is None
    padding = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    others = [
        {"attention_mask": padding},  # a padding mask, even one of all ones, is not read
        {"q_offset": 3, "kv_length": 8},  # queries behind cached tokens
        {"q_offset": torch.tensor(0)},  # a static cache's offset: its slots may be empty
        {"q_length": 1, "kv_length": 5, "q_offset": 4},  # a decode step
        {"allow_is_causal_skip": False},  # transformers wants the mask built
        {"mask_function": lambda b, h, q, kv: kv <= q + 1},  # not the causal mask
    ]
    for change in others:
        got = causal_sdpa_mask(**{**args, **change})
        want = causal_attention.sdpa_mask(**{**args, **change})
        assert got is not None and torch.equal(got, want), change


def test_traced_forward_runs_causal_sdpa_without_a_mask(model, monkeypatch):
    # As transformers 5.17 (the H200 machine's) does whenever it traces.
    monkeypatch.setattr("transformers.masking_utils._ignore_causal_mask_sdpa", lambda *a, **k: False)
    ids = torch.randint(5, model.config.vocab_size, (3, 17))
    with torch.no_grad():
        eager = model(input_ids=ids).logits
        stock, stock_logits = attention_calls(model, input_ids=ids)
        assert use_causal_attention(model) and model.config._attn_implementation == NAME
        ours, our_logits = attention_calls(model, input_ids=ids)
    layers = model.config.num_hidden_layers
    # Why: traced, stock SDPA builds the mask it would skip eagerly.
    assert len(stock) == layers and all(c["attn_mask"] is not None and not c["is_causal"] for c in stock)
    assert len(ours) == layers and all(c["attn_mask"] is None and c["is_causal"] for c in ours)
    torch.testing.assert_close(our_logits, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stock_logits, eager, rtol=1e-5, atol=1e-5)
    # Padded rows keep their mask.
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    padded, padded_logits = attention_calls(model, input_ids=ids, attention_mask=mask)
    assert all(c["attn_mask"] is not None for c in padded)
    with torch.no_grad():
        torch.testing.assert_close(padded_logits, model(input_ids=ids, attention_mask=mask).logits)


def test_other_implementations_are_left_alone(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_causal_attention(model) and model.config._attn_implementation == "eager"


def test_right_padded_rows_hold_the_left_padded_tokens_and_positions():
    ids = torch.tensor([[0, 0, 7, 8, 9], [3, 4, 5, 6, 7], [0, 0, 0, 0, 2]])
    mask = (ids != 0).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    got_ids, got_positions, got_mask = right_padded(ids, mask, positions, pad_id=0)
    assert got_ids.tolist() == [[7, 8, 9, 0, 0], [3, 4, 5, 6, 7], [2, 0, 0, 0, 0]]
    assert got_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert got_positions[got_mask.bool()].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0]
    assert got_positions.max() < ids.shape[1]  # the padding's positions stay in the model's range
