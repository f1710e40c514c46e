import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from helpers.encoding import eos_encode_pair
from helpers.tiny_models import tiny_llama, train_bpe
from ptft.evaluate.multiple_choice import (
    continuation_loglikelihoods,
    encode_requests,
    mc_metrics,
    score_multiple_choice,
)

SENTENCES = [
    "the cat sat on the mat and looked at the dog .",
    "a man is cutting a cake with a knife in the kitchen .",
    "she opened the door , walked in and put the box on the table .",
    "the dog ran after the ball while the children laughed .",
    "he poured water into the glass and drank it slowly .",
    "hello world , hello there , helpful helper .",
] * 20

CONTEXTS = [
    "the cat sat on the",
    "a man is cutting a cake with a knife in the kitchen . then he",
    "she opened the door ",
    "",
    "the dog ran after the ball while the children laughed . he poured water into the glass and",
    "hello",
]
CHOICES = [
    ["mat", "dog", "table and looked at the dog"],
    ["puts the knife down .", "drinks", "opens the door , walks in", "laughed"],
    ["walked in"],
    ["the cat sat", "hello world"],
    ["drank it slowly .", "ran"],
    ["world", "there , helpful helper .", "!"],
]
REQUESTS = [(ctx, " " + c) for ctx, item in zip(CONTEXTS, CHOICES, strict=True) for c in item]


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_bpe(SENTENCES, 400, ["<eos>", "<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer)


def reference_loglikelihood(model, ctx_ids, cont_ids, max_length=None):
    """One unpadded forward pass; sum log p(token | everything before) over the continuation."""
    tokens = ctx_ids + cont_ids
    if max_length is not None:
        tokens = tokens[-(max_length + 1) :]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens[:-1]])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    n = len(tokens) - 1
    return sum(logp[n - len(cont_ids) + j, t].item() for j, t in enumerate(cont_ids))


def test_matches_unbatched_reference(model, tokenizer):
    got = continuation_loglikelihoods(model, tokenizer, REQUESTS, batch_size=4)
    expected = np.array([reference_loglikelihood(model, *eos_encode_pair(tokenizer, c, x)) for c, x in REQUESTS])
    assert got.dtype == np.float64 and got.shape == (len(REQUESTS),)
    assert np.ptp(expected) > 1.0  # the comparison below can tell requests apart
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_independent_of_batch_size(model, tokenizer):
    results = [continuation_loglikelihoods(model, tokenizer, REQUESTS, batch_size=b) for b in (1, 3, 64)]
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)
    np.testing.assert_allclose(results[2], results[0], atol=1e-5)


def test_trailing_context_space_moves_to_continuation(model, tokenizer):
    pairs = [("she opened the door ", "walked in"), ("she opened the door", " walked in")]
    spaced, moved = encode_requests(tokenizer, pairs)
    assert spaced == moved
    assert spaced[1] == tokenizer.encode(" walked in", add_special_tokens=False)
    lls = continuation_loglikelihoods(model, tokenizer, pairs, 2)
    assert lls[0] == pytest.approx(lls[1], abs=1e-6)


def test_continuation_tokens_are_the_tail_of_the_joint_encoding(tokenizer):
    # "hel" + "lo" merges across the boundary; lm-eval still cuts the joint encoding at len(context).
    [(ctx_ids, cont_ids)] = encode_requests(tokenizer, [("hel", "lo world")])
    whole = tokenizer.encode("hello world", add_special_tokens=False)
    assert ctx_ids == tokenizer.encode("hel", add_special_tokens=False)
    assert cont_ids == whole[len(ctx_ids) :]
    assert cont_ids != tokenizer.encode("lo world", add_special_tokens=False)  # the merge really happens


def test_exactly_the_continuation_tokens_are_summed(model, tokenizer):
    # Chain rule at a word boundary (where the tokenizer cannot merge): an off-by-one in the
    # scored span would count a context token or drop a continuation token and break the equality.
    ctx = "the dog ran after the ball"
    whole, first, second = continuation_loglikelihoods(
        model, tokenizer, [(ctx, " while the children"), (ctx, " while"), (ctx + " while", " the children")], 3
    )
    assert whole == pytest.approx(first + second, abs=1e-4)


def test_empty_context_conditions_on_eos(model, tokenizer):
    [(ctx_ids, cont_ids)] = encode_requests(tokenizer, [("", " hello world")])
    assert ctx_ids == [tokenizer.eos_token_id]
    assert cont_ids == tokenizer.encode(" hello world", add_special_tokens=False)
    [ll] = continuation_loglikelihoods(model, tokenizer, [("", " hello world")], 1)
    assert ll == pytest.approx(reference_loglikelihood(model, ctx_ids, cont_ids), abs=1e-4)


def test_long_context_is_truncated_from_the_left(model, tokenizer):
    request = (CONTEXTS[4], " drank it slowly .")
    ctx_ids, cont_ids = eos_encode_pair(tokenizer, *request)
    max_length = 8
    assert len(ctx_ids) + len(cont_ids) > max_length + 1
    model.config.max_position_embeddings = max_length
    try:
        [ll] = continuation_loglikelihoods(model, tokenizer, [request], 1)
        with pytest.raises(ValueError, match="exceeds max length"):
            continuation_loglikelihoods(model, tokenizer, [("a", " " + " ".join(["cat"] * 12))], 1)
    finally:
        model.config.max_position_embeddings = 128
    assert ll == pytest.approx(reference_loglikelihood(model, ctx_ids, cont_ids, max_length), abs=1e-4)


def test_items_with_different_numbers_of_choices_are_scattered_back(model, tokenizer):
    per_item = score_multiple_choice(model, tokenizer, CONTEXTS, CHOICES, batch_size=5)
    assert [len(a) for a in per_item] == [len(c) for c in CHOICES]
    for ctx, item, lls in zip(CONTEXTS, CHOICES, per_item, strict=True):
        alone = continuation_loglikelihoods(model, tokenizer, [(ctx, " " + c) for c in item], batch_size=1)
        np.testing.assert_allclose(lls, alone, atol=1e-5)
    assert score_multiple_choice(model, tokenizer, [], [], batch_size=2) == []


def test_delimiter_is_prepended_to_each_choice(model, tokenizer):
    [lls] = score_multiple_choice(model, tokenizer, ["hello"], [["world", "there"]], 2, delimiter="")
    expected = continuation_loglikelihoods(model, tokenizer, [("hello", "world"), ("hello", "there")], 2)
    np.testing.assert_allclose(lls, expected, atol=1e-5)


@pytest.fixture
def packed(monkeypatch):
    """The packed rows on a CPU too (by default a GPU's path)."""
    monkeypatch.setattr("ptft.evaluate.multiple_choice.PACKED_DEVICES", ("cuda", "cpu"))


def test_packed_choices_run_in_one_call_and_match_the_reference(model, tokenizer, packed):
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        per_item = score_multiple_choice(model, tokenizer, CONTEXTS, CHOICES, batch_size=16)
    finally:
        hook.remove()
    split = [
        eos_encode_pair(tokenizer, ctx, " " + c) for ctx, item in zip(CONTEXTS, CHOICES, strict=True) for c in item
    ]
    # One call; its rows hold each context once and every choice but its last token, nothing else.
    [kwargs] = seen
    assert kwargs["attention_mask"].ndim == 4 and kwargs["input_ids"].shape[0] == len(CONTEXTS)
    ctx_tokens = sum(len(eos_encode_pair(tokenizer, ctx, " x")[0]) for ctx in CONTEXTS)
    real = int((kwargs["input_ids"] != tokenizer.pad_token_id).sum())
    assert real == ctx_tokens + sum(len(c) - 1 for _, c in split)
    flat = np.concatenate(per_item)
    expected = [reference_loglikelihood(model, ctx_ids, cont_ids) for ctx_ids, cont_ids in split]
    np.testing.assert_allclose(flat, expected, atol=1e-4)


def test_shared_context_runs_once_per_item_and_matches_the_reference(model, tokenizer):
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["attention_mask"].clone()),
                                           with_kwargs=True)  # fmt: skip
    try:
        per_item = score_multiple_choice(model, tokenizer, CONTEXTS, CHOICES, batch_size=16)
    finally:
        hook.remove()
    # One call for all contexts, one for all continuations; no row is a context + choice pair.
    assert len(seen) == 2
    split = [
        eos_encode_pair(tokenizer, ctx, " " + c) for ctx, item in zip(CONTEXTS, CHOICES, strict=True) for c in item
    ]
    ctx_tokens = sum(len(eos_encode_pair(tokenizer, ctx, " x")[0]) for ctx in CONTEXTS)
    assert int(seen[0].sum()) == ctx_tokens
    assert int(seen[1][:, -seen[1].shape[1] + seen[0].shape[1] :].sum()) == sum(len(c) - 1 for _, c in split)
    flat = np.concatenate(per_item)
    expected = [reference_loglikelihood(model, ctx_ids, cont_ids) for ctx_ids, cont_ids in split]
    np.testing.assert_allclose(flat, expected, atol=1e-4)


@pytest.mark.parametrize("rows", ["cached", "packed"])
def test_multiple_choice_is_independent_of_batch_size(model, tokenizer, rows, monkeypatch):
    if rows == "packed":
        monkeypatch.setattr("ptft.evaluate.multiple_choice.PACKED_DEVICES", ("cuda", "cpu"))
    one = score_multiple_choice(model, tokenizer, CONTEXTS, CHOICES, batch_size=1)
    sixteen = score_multiple_choice(model, tokenizer, CONTEXTS, CHOICES, batch_size=16)
    for a, b in zip(one, sixteen, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert int(np.argmax(a)) == int(np.argmax(b))


def test_an_item_too_long_for_the_window_is_scored_request_by_request(model, tokenizer):
    model.config.max_position_embeddings = 8
    try:
        [lls] = score_multiple_choice(model, tokenizer, CONTEXTS[4:5], CHOICES[4:5], batch_size=2)
    finally:
        model.config.max_position_embeddings = 128
    for ll, choice in zip(lls, CHOICES[4], strict=True):
        ctx_ids, cont_ids = eos_encode_pair(tokenizer, CONTEXTS[4], " " + choice)
        assert ll == pytest.approx(reference_loglikelihood(model, ctx_ids, cont_ids, 8), abs=1e-4)


def test_acc_and_acc_norm_disagree():
    # The short choice has the higher total log-likelihood; per character the long one is better.
    choices = ["yes", "a much longer answer"]  # 3 and 20 characters
    lls = np.array([-4.0, -10.0])  # per char: -1.33 vs -0.5
    assert mc_metrics(lls, choices, gold=0) == {"acc": 1.0, "acc_norm": 0.0}
    assert mc_metrics(lls, choices, gold=1) == {"acc": 0.0, "acc_norm": 1.0}


def test_acc_norm_divides_by_choice_length_without_delimiter():
    # Per char without the delimiter: -1.0 vs -0.9 (choice 1); with it (2 and 3 chars): -0.5 vs -0.6.
    assert mc_metrics(np.array([-1.0, -1.8]), ["a", "bb"], gold=1)["acc_norm"] == 1.0


def test_ties_go_to_the_first_choice():
    assert mc_metrics(np.array([-3.0, -3.0, -5.0]), ["aa", "bb", "cc"], gold=0) == {"acc": 1.0, "acc_norm": 1.0}
    assert mc_metrics(np.array([-3.0, -3.0, -5.0]), ["aa", "bb", "cc"], gold=1) == {"acc": 0.0, "acc_norm": 0.0}
    # Equal per-character scores (-1.0 each) from different totals.
    assert mc_metrics(np.array([-4.0, -2.0]), ["abcd", "ab"], gold=0) == {"acc": 0.0, "acc_norm": 1.0}


def test_packed_choices_keep_absolute_positions(tokenizer, packed):
    # GPT-2 adds a learned embedding per position: a choice must sit where it would after its context.
    from helpers.tiny_models import tiny_gpt2

    model = tiny_gpt2(len(tokenizer), n_positions=128)
    per_item = score_multiple_choice(model, tokenizer, CONTEXTS, CHOICES, batch_size=4)
    split = [
        eos_encode_pair(tokenizer, ctx, " " + c) for ctx, item in zip(CONTEXTS, CHOICES, strict=True) for c in item
    ]
    expected = [reference_loglikelihood(model, ctx_ids, cont_ids) for ctx_ids, cont_ids in split]
    np.testing.assert_allclose(np.concatenate(per_item), expected, atol=1e-4)
