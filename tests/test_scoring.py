import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ptft.evaluate.batching import left_pad
from ptft.evaluate.generate import cut_at_stop, generate_greedy
from ptft.evaluate.metrics import accuracy, rouge_l
from ptft.evaluate.tokenprob import label_token_sets, score_token_prob


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


PROMPTS = [
    "### Input_1: anna has a big cup in the hall .\n ### Input_2: the cup is big .\n ### Inference:",
    "x",
    "the fox is quick . the owl",
    "Consider the following texts: Text 1: ben has a hat . Text 2: the hat is not red . The relation is",
] * 5


def test_label_token_sets_include_spaced_and_unspaced(model_and_tokenizer):
    _, tok = model_and_tokenizer
    sets = label_token_sets(tok, ["yes", "no"])
    assert tok.convert_tokens_to_ids("Ġyes") in sets[0] and tok.convert_tokens_to_ids("yes") in sets[0]


def test_token_prob_matches_a_direct_computation(model_and_tokenizer):
    model, tok = model_and_tokenizer
    labels = ["entailment", "neutral", "contradiction"]
    pred, scores = score_token_prob(model, tok, PROMPTS[:4], labels, batch_size=4)
    sets = label_token_sets(tok, labels)
    for i, prompt in enumerate(PROMPTS[:4]):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        expected = [max(logp[j].item() for j in s) for s in sets]
        np.testing.assert_allclose(scores[i], expected, atol=1e-5)
        assert pred[i] == int(np.argmax(expected))


def test_token_prob_is_independent_of_batch_size(model_and_tokenizer):
    model, tok = model_and_tokenizer
    labels = ["yes", "no"]
    p1, s1 = score_token_prob(model, tok, PROMPTS, labels, batch_size=1)
    p16, s16 = score_token_prob(model, tok, PROMPTS, labels, batch_size=16)
    assert (p1 == p16).all()
    np.testing.assert_allclose(s1, s16, atol=1e-4)


def test_generation_is_independent_of_batch_size(model_and_tokenizer):
    model, tok = model_and_tokenizer
    g1 = generate_greedy(model, tok, PROMPTS, max_new_tokens=8, stop="\n", batch_size=1)
    g16 = generate_greedy(model, tok, PROMPTS, max_new_tokens=8, stop="\n", batch_size=16)
    assert g1 == g16
    assert all("\n" not in g for g in g1)


def test_left_pad_positions_count_real_tokens():
    batch = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_metrics():
    assert accuracy(["yes", "no"], ["yes", "yes"]) == [1.0, 0.0]
    assert rouge_l(["the cat sat"], ["the cat sat"]) == [1.0]
    # LCS "the cat" = 2 of 3 tokens each way: F = 2/3
    assert rouge_l(["the cat ran"], ["the cat sat"])[0] == pytest.approx(2 / 3)
    assert rouge_l([""], ["a b"]) == [0.0]
    assert cut_at_stop(" a summary .\n### Input", "\n") == "a summary ."
