"""Prompts longer than the context window: what is cut, and that it is recorded per example."""

import numpy as np
import pytest
import torch

from ptft.data.prompts import SHOT_SEPARATOR, few_shot_prompt
from ptft.data.tasks import TASK_TYPES
from ptft.evaluate.encoding import encode_prompts
from ptft.evaluate.generate import generate_greedy
from ptft.evaluate.multiple_choice import score_multiple_choice
from ptft.evaluate.scoring import score_items
from ptft.evaluate.tokenprob import label_token_sets, score_token_prob

NLI = TASK_TYPES["nli"]
SHOTS = [
    {"premise": f"shot {i} : the dog ran after the ball in the park .", "hypothesis": "a dog ran .", "label": i % 3}
    for i in range(4)
]
QUERY = {"premise": "a man is cutting a cake with a knife in the kitchen .", "hypothesis": "he cooks .", "label": 0}
WINDOW = 48


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from ptft.checkpoints.load import load_pretrained

    model, tok = load_pretrained(tiny_model_dir, dtype=torch.float32)
    # A small window makes a 4-shot prompt too long; the model itself could read more.
    model.config.max_position_embeddings = WINDOW
    return model.eval(), tok


def ids(tok, text):
    return encode_prompts(tok, [text], "auto")[0]


def last_position_logprobs(model, tok, token_ids, labels):
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([token_ids])).logits[0, -1].double(), dim=-1)
    return [float(logp[s].max()) for s in label_token_sets(tok, labels)]


def test_oldest_shots_go_first_and_the_query_stays_whole(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = few_shot_prompt(NLI, SHOTS, QUERY, "default")
    full = ids(tok, prompt)
    assert len(full) > WINDOW
    # The longest tail of whole parts (shots, then the query) that fits the window.
    kept_text = next(prompt[start:] for start in prompt.part_starts if len(ids(tok, prompt[start:])) <= WINDOW)
    assert kept_text.startswith("Premise") or kept_text.startswith(NLI.formats["default"][:8])
    assert len(kept_text) < len(prompt) and kept_text.count(SHOT_SEPARATOR) < prompt.count(SHOT_SEPARATOR)
    _, scores, cut = score_token_prob(model, tok, [prompt], list(NLI.labels), 4, return_truncated=True)
    kept = ids(tok, kept_text)
    assert full[-len(kept) :] == kept
    assert cut == [len(full) - len(kept)]
    np.testing.assert_allclose(scores[0], last_position_logprobs(model, tok, kept, NLI.labels), atol=1e-5)


def test_a_query_too_long_alone_loses_its_start(model_and_tokenizer):
    model, tok = model_and_tokenizer
    query = {**QUERY, "premise": " ".join(["the dog ran after the ball ."] * 20)}
    prompt = few_shot_prompt(NLI, SHOTS[:1], query, "default")
    full = ids(tok, prompt)
    _, scores, cut = score_token_prob(model, tok, [prompt], list(NLI.labels), 4, return_truncated=True)
    assert cut == [len(full) - WINDOW]
    np.testing.assert_allclose(scores[0], last_position_logprobs(model, tok, full[-WINDOW:], NLI.labels), atol=1e-5)


def test_nothing_cut_is_zero_and_generation_reserves_its_new_tokens(model_and_tokenizer):
    model, tok = model_and_tokenizer
    short = few_shot_prompt(NLI, [], QUERY, "default")
    long = few_shot_prompt(NLI, SHOTS, QUERY, "default")
    assert score_token_prob(model, tok, [short], list(NLI.labels), 4, return_truncated=True)[2] == [0]
    _, cut = generate_greedy(model, tok, [short, long], 8, "\n", 2, return_truncated=True)
    n_short = len(ids(tok, short))
    assert cut[0] == max(0, n_short - (WINDOW - 8))
    assert cut[1] > 0 and len(ids(tok, long)) - cut[1] <= WINDOW - 8


def test_multiple_choice_records_lm_eval_left_truncation(model_and_tokenizer):
    model, tok = model_and_tokenizer
    context = " ".join(["the dog ran after the ball ."] * 12)
    choices = [["home .", "to the park and back again ."]]
    _, cut = score_multiple_choice(model, tok, [context], choices, 2, return_truncated=True)
    n_ctx = len(ids(tok, context))
    longest = max(len(tok(" " + c, add_special_tokens=False)["input_ids"]) for c in choices[0])
    assert cut == [n_ctx + longest - (WINDOW + 1)]


def test_scorers_return_the_truncated_tokens_column(model_and_tokenizer):
    model, tok = model_and_tokenizer
    items = [QUERY, {**QUERY, "label": 2}]
    prompts = [few_shot_prompt(NLI, [], QUERY, "default"), few_shot_prompt(NLI, SHOTS, QUERY, "default")]
    cfg = {"batch_size": 2, "classification": "tokenprob"}
    [result] = score_items(model, tok, NLI, items, prompts, cfg)
    assert result["truncated_tokens"][0] == 0 and result["truncated_tokens"][1] > 0


def test_part_starts_find_the_tokens_the_offsets_give(model_and_tokenizer):
    """part_start_tokens (the fast tokenizer's char_to_token) against its definition: the first token
    whose offset is at or after the part's first character, read from the offset mapping. Starts
    fall on words, on spaces and newlines before them, inside words and at the end."""
    from ptft.data.prompts import Prompt
    from ptft.evaluate.encoding import part_start_tokens

    _, tok = model_and_tokenizer
    rng = np.random.default_rng(0)
    words = ["the", " dog", "\n\n", "Premise:", " ran", "é", "  ", "ball", ".", "\n", "Hypothèse", " 42"]
    texts = []
    for _ in range(40):
        text = "".join(rng.choice(words, size=int(rng.integers(5, 40))))
        starts = sorted(set(rng.integers(0, len(text) + 1, size=4).tolist()))
        texts.append(Prompt(text, starts))
    texts.append("a plain string has no parts")
    got = part_start_tokens(tok, texts)
    offsets = tok(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for text, spans, found in zip(texts, offsets, got, strict=True):
        expected = [next((j for j, (a, _) in enumerate(spans) if a >= s), len(spans))
                    for s in getattr(text, "part_starts", ())]  # fmt: skip
        assert found == expected, (text, text.part_starts)
