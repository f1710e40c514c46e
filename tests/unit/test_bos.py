"""evaluate.add_bos: prompts conditioned on BOS as lm-evaluation-harness 0.4.13's HF model does."""

import numpy as np
import pytest
import torch
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from helpers.encoding import eos_encode_pair
from helpers.tiny_models import tiny_llama, train_bpe
from ptft.evaluate.encoding import add_bos_setting, encode_prompts, uses_bos
from ptft.evaluate.generate import generate_greedy
from ptft.evaluate.multiple_choice import encode_requests, mc_predictions, score_multiple_choice
from ptft.evaluate.tokenprob import label_token_sets, score_token_prob

SENTENCES = [
    "the cat sat on the mat and looked at the dog .",
    "a man is cutting a cake with a knife in the kitchen .",
    "she opened the door , walked in and put the box on the table .",
    "the dog ran after the ball while the children laughed .",
    "he poured water into the glass and drank it slowly .",
] * 20

CONTEXTS = [
    "the cat sat on the",
    "a man is cutting a cake with a knife in the kitchen . then he",
    "she opened the door ",
    "",
    "the dog ran after the ball while the children laughed . he poured water into the glass and",
]
CHOICES = [
    ["mat", "dog", "table and looked at the dog"],
    ["puts the knife down .", "drinks", "opens the door , walks in", "laughed"],
    ["walked in", "ran"],
    ["the cat sat", "he poured water", "a"],
    ["drank it slowly .", "ran"],
]


def _tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """``plain``: EOS only; ``llama``: adds BOS <s> != EOS </s>; ``bos_unused``: has BOS <s> but never adds it."""
    specials = ["<eos>", "<pad>"] if kind == "plain" else ["<s>", "</s>", "<pad>"]
    tok = train_bpe(SENTENCES, 300, specials)
    if kind == "plain":
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


KINDS = ("plain", "llama", "bos_unused")


@pytest.fixture(scope="module", params=KINDS)
def setup(request):
    tok = _tokenizer(request.param)
    return request.param, tok, tiny_llama(tok)


def lm_eval_encode_pair(tok, context: str, continuation: str, add_bos_token=None):
    """lm-eval 0.4.13's HFLM request encoding (``loglikelihood``, ``_encode_pair``, ``tok_encode``), written out."""
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def tok_encode(string, add_special_tokens=None):
        kwargs = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif add_bos_token is not None:
            kwargs["add_special_tokens"] = add_bos_token
        if add_special_tokens is None and string.startswith(tok.decode(prefix)):
            kwargs["add_special_tokens"] = False
        return tok.encode(string, **kwargs)

    if context == "":
        cont = tok_encode(continuation, add_special_tokens=False)
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(context + continuation)
    ctx = tok_encode(context)
    return ctx, whole[len(ctx) :]


def reference_ll(model, ctx_ids, cont_ids) -> float:
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return float(sum(logp[len(ctx_ids) - 1 + j, t] for j, t in enumerate(cont_ids)))


REQUESTS = [(ctx, " " + c) for ctx, item in zip(CONTEXTS, CHOICES, strict=True) for c in item]


def test_setting_values():
    assert add_bos_setting({}) == "auto"
    assert add_bos_setting({"add_bos": False}) is False
    with pytest.raises(ValueError, match="add_bos"):
        add_bos_setting({"add_bos": "yes"})
    with pytest.raises(ValueError, match="no BOS"):
        uses_bos(_tokenizer("plain"), True)


def test_auto_uses_bos_only_where_the_tokenizer_adds_it():
    assert [uses_bos(_tokenizer(k), "auto") for k in KINDS] == [False, True, False]


def test_auto_encodes_requests_as_lm_eval(setup):
    _, tok, _ = setup
    got = encode_requests(tok, REQUESTS, "auto")
    assert got == [lm_eval_encode_pair(tok, ctx, cont) for ctx, cont in REQUESTS]


@pytest.mark.parametrize("add_bos", [True, False])
def test_explicit_setting_encodes_requests_as_lm_eval_add_bos_token(add_bos):
    tok = _tokenizer("llama")  # the setting only differs from auto on a tokenizer with a BOS
    got = encode_requests(tok, REQUESTS, add_bos)
    expected = [lm_eval_encode_pair(tok, ctx, cont, add_bos_token=add_bos) for ctx, cont in REQUESTS]
    if add_bos is False:
        # lm-eval conditions an empty context on BOS whatever add_bos_token says; false keeps ptft's EOS.
        expected = [
            eos_encode_pair(tok, ctx, cont) if not ctx else e for (ctx, cont), e in zip(REQUESTS, expected, strict=True)
        ]
    assert got == expected


def test_false_reproduces_the_previous_encoding(setup):
    _, tok, _ = setup
    assert encode_requests(tok, REQUESTS, False) == [eos_encode_pair(tok, ctx, cont) for ctx, cont in REQUESTS]


def test_empty_context_whose_continuation_starts_with_bos_conditions_on_that_token():
    tok = _tokenizer("llama")
    [(ctx, cont)] = encode_requests(tok, [("", "<s> the cat")], "auto")
    assert ctx == [tok.bos_token_id] and cont == tok.encode(" the cat", add_special_tokens=False)


def test_multiple_choice_matches_lm_eval_definition(setup):
    _, tok, model = setup
    lls = score_multiple_choice(model, tok, CONTEXTS, CHOICES, batch_size=3, add_bos="auto")
    flat = iter(lm_eval_encode_pair(tok, ctx, cont) for ctx, cont in REQUESTS)
    mismatches = 0
    for got, choices in zip(lls, CHOICES, strict=True):
        expected = np.array([reference_ll(model, *next(flat)) for _ in choices])
        np.testing.assert_allclose(got, expected, atol=1e-4)
        mismatches += mc_predictions(got, choices) != mc_predictions(expected, choices)
    assert mismatches == 0


def test_bos_changes_llama_scores_and_false_keeps_the_old_ones():
    tok = _tokenizer("llama")
    model = tiny_llama(tok)
    old = score_multiple_choice(model, tok, CONTEXTS, CHOICES, batch_size=4, add_bos=False)
    pairs = iter(eos_encode_pair(tok, ctx, cont) for ctx, cont in REQUESTS)
    for got, choices in zip(old, CHOICES, strict=True):
        np.testing.assert_allclose(got, [reference_ll(model, *next(pairs)) for _ in choices], atol=1e-4)
    new = score_multiple_choice(model, tok, CONTEXTS, CHOICES, batch_size=4, add_bos="auto")
    assert not np.allclose(np.concatenate(old), np.concatenate(new))


def test_tokenprob_and_generation_condition_on_the_same_ids(setup):
    kind, tok, model = setup
    prompts = [c.rstrip() for c in CONTEXTS if c]
    ids = encode_prompts(tok, prompts, "auto")
    expected_ids = [tok.encode(p) if kind == "llama" else tok.encode(p, add_special_tokens=False) for p in prompts]
    assert ids == expected_ids
    labels = ["mat", "dog", "ran"]
    _, scores = score_token_prob(model, tok, prompts, labels, batch_size=2, add_bos="auto")
    sets = label_token_sets(tok, labels)
    for row, e in zip(scores, ids, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([e])).logits[0, -1].double(), dim=-1)
        np.testing.assert_allclose(row, [float(logp[s].max()) for s in sets], atol=1e-5)
    # Generation reads the same ids: spelling the BOS out in the text gives the same output.
    if kind == "llama":
        auto = generate_greedy(model, tok, prompts, 6, "\n", 2, add_bos="auto")
        spelled = generate_greedy(model, tok, ["<s>" + p for p in prompts], 6, "\n", 2, add_bos=False)
        assert auto == spelled
        assert generate_greedy(model, tok, ["<s>" + p for p in prompts], 6, "\n", 2, add_bos="auto") == auto


def test_toy_study_tokenizer_gets_no_bos():
    from ptft.checkpoints.tokenizer import train_tokenizer

    tok = train_tokenizer(SENTENCES, 300)
    assert not uses_bos(tok, "auto")
    assert encode_requests(tok, REQUESTS, "auto") == encode_requests(tok, REQUESTS, False)


def test_agrees_with_lm_eval_when_installed(setup):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    _, tok, model = setup
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=i)
        for i, (ctx, cont) in enumerate(REQUESTS)
    ]
    theirs = np.array([ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)])
    ours = score_multiple_choice(model, tok, CONTEXTS, CHOICES, batch_size=3, add_bos="auto")
    np.testing.assert_allclose(np.concatenate(ours), theirs, atol=1e-4)
    bounds = np.cumsum([len(c) for c in CHOICES])[:-1]
    for got, expected, choices in zip(ours, np.split(theirs, bounds), CHOICES, strict=True):
        assert mc_predictions(got, choices) == mc_predictions(expected, choices)
