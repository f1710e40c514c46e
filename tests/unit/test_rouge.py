"""Our ROUGE-L against the ``rouge-score`` package, bitwise, on a corpus of 1200 pairs."""

import random

import pytest
from rouge_score import rouge_scorer

from ptft.evaluate.rouge import lcs_length, rouge_l_fmeasure

WORDS = (
    "the a of cat cats dog dogs running runs ran run quickly quick generalization generalize generalized "
    "summary summaries summarizing model models trained training trains fine-tuned pre-training it's "
    "don't U.S. 2024 3.5 42 naïve café über Zürich data-set e-mail x y z the the of and"
).split()
PUNCT = ["", "", "", ",", ".", "!", "?", ";", " -", "'s", ")", "(", '"', "\n", "\t", "…", "—"]


def _text(rng: random.Random, n: int) -> str:
    words = []
    for _ in range(n):
        word = rng.choice(WORDS)
        word = word.upper() if rng.random() < 0.1 else word.capitalize() if rng.random() < 0.2 else word
        words.append(word + rng.choice(PUNCT))
    return " ".join(words)


def corpus(n_pairs: int = 1200, seed: int = 0) -> list[tuple[str, str]]:
    """Predictions and golds of varied lengths; some share a lot, some nothing, some are empty."""
    rng = random.Random(seed)
    pairs = [("", ""), ("", "a b"), ("a b", ""), ("!!! ...", "a"), ("The cat.", "the CAT"), ("a a a a", "a")]
    while len(pairs) < n_pairs:
        gold = _text(rng, rng.choice([1, 3, 12, 25, 60, 150]))
        kind = rng.random()
        if kind < 0.4:  # a noisy copy: words dropped, swapped, inserted
            tokens = gold.split()
            tokens = [t for t in tokens if rng.random() > 0.3]
            for _ in range(rng.randint(0, 5)):
                tokens.insert(rng.randint(0, len(tokens)), rng.choice(WORDS))
            prediction = " ".join(tokens)
        elif kind < 0.9:
            prediction = _text(rng, rng.choice([1, 5, 20, 60, 200]))
        else:
            prediction = rng.choice(["", "   ", "?!", gold])
        pairs.append((prediction, gold))
    return pairs


@pytest.mark.parametrize("stemmer", [False, True])
def test_rouge_l_equals_rouge_score_bitwise(stemmer):
    reference = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)
    pairs = corpus()
    assert len(pairs) >= 1000
    ours = [rouge_l_fmeasure(p, g, stemmer) for p, g in pairs]
    theirs = [reference.score(g, p)["rougeL"].fmeasure for p, g in pairs]
    mismatches = [(pairs[i], ours[i], theirs[i]) for i in range(len(pairs)) if ours[i] != theirs[i]]
    assert not mismatches, mismatches[:3]
    # The corpus covers the whole range, not just trivial scores.
    assert sum(0 < s < 1 for s in ours) > 500 and ours.count(1.0) > 10 and ours.count(0.0) > 10


def test_lcs_length_small_cases():
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length(list("aaaa"), list("aa")) == 2
    assert lcs_length(list("abc"), list("def")) == 0
