"""evaluate.fewshot: fixed — one shot set per eval set and format, its KV cache computed once.

The scores and texts from the shared prefix's cache must be those of the whole prompts: TokenProb
within float rounding, greedy texts equal (both decoders), also for prompts cut to the window.
"""

import numpy as np
import pytest

from helpers.eval_data import write_eval_data
from helpers.fixed_shots import QUERIES, SHOTS, fixed_prompts
from ptft.data.prompts import SHOT_SEPARATOR
from ptft.data.registry import get_dataset
from ptft.evaluate import generate as generate_module
from ptft.evaluate import prefix as prefix_module
from ptft.evaluate.generate import generate_greedy
from ptft.evaluate.prefix import MIN_SHARED, common_length, shared_prefix_groups
from ptft.evaluate.scoring import build_prompts
from ptft.evaluate.tokenprob import score_token_prob


def counting_prefixes(monkeypatch) -> list[int]:
    """Patch prefix_cache to record the length of every prefix the scorers cache."""
    lengths: list[int] = []
    real = prefix_module.prefix_cache
    monkeypatch.setattr(prefix_module, "prefix_cache", lambda model, ids: lengths.append(len(ids)) or real(model, ids))
    return lengths


def test_groups_share_their_longest_common_beginning():
    a = list(range(100, 160))
    encoded = [a + [1, 2], a + [1, 3, 4], a[:40] + [7] * 30, list(range(200, 240)) + [5], [9] * 10, a + [1]]
    groups = dict((tuple(m), s) for s, m in shared_prefix_groups(encoded))
    # The first, second, third and last start alike: their common part is a[:40] (the third's).
    assert groups[(0, 1, 2, 5)] == 40
    assert groups[(3,)] == 0 and groups[(4,)] == 0  # alone; shorter than MIN_SHARED
    assert common_length([a + [1, 2], a + [1, 3]]) == len(a) + 1
    # Every member keeps a token of its own: a prompt that is the prefix itself caps it.
    [(shared, members)] = shared_prefix_groups([a, a + [1], a + [2]])
    assert shared == len(a) - 1 and members == [0, 1, 2]
    # A shared beginning shorter than MIN_SHARED runs whole.
    short = shared_prefix_groups([a[:MIN_SHARED] + [1] * 5, a[:MIN_SHARED] + [2] * 5], MIN_SHARED + 1)
    assert sorted(i for _, m in short for i in m) == [0, 1] and all(s == 0 for s, _ in short)


def test_token_prob_from_the_shared_prefix_equals_whole_prompts(peaked, monkeypatch):
    model, tok = peaked
    labels = ["entailment", "neutral", "contradiction"]
    prompts = fixed_prompts()
    ref_pred, ref = score_token_prob(model, tok, prompts, labels, batch_size=2)
    cached = counting_prefixes(monkeypatch)
    pred, got = score_token_prob(model, tok, prompts, labels, batch_size=2, shared_prefix=True)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert (pred == ref_pred).all()
    shots_tokens = len(tok(SHOT_SEPARATOR.join(SHOTS), add_special_tokens=False)["input_ids"])
    assert len(cached) == 1 and shots_tokens - 2 <= cached[0] <= shots_tokens + 8


@pytest.mark.parametrize("decoder", ["generate", "static"])
def test_generation_from_the_shared_prefix_gives_the_same_texts(peaked, monkeypatch, decoder):
    model, tok = peaked
    prompts = fixed_prompts()
    kwargs = {"max_new_tokens": 10, "stop": "\n", "batch_size": 2, "decoder": decoder}
    ref = generate_greedy(model, tok, prompts, **kwargs)
    cached = counting_prefixes(monkeypatch)
    got = generate_greedy(model, tok, prompts, shared_prefix=True, **kwargs)
    assert got == ref and len(cached) == 1 and cached[0] > MIN_SHARED
    assert len(set(ref)) >= 3  # the rows' texts differ


def test_the_compiled_static_decoder_runs_whole_prompts(peaked, monkeypatch):
    """Where the static decoder compiles, fixed shots run as whole prompts (measured faster on an
    H200): no prefix is cached, and the texts are the prefix path's."""
    model, tok = peaked
    prompts = fixed_prompts()
    kwargs = {"max_new_tokens": 10, "stop": "\n", "batch_size": 2, "decoder": "static", "shared_prefix": True}
    ref = generate_greedy(model, tok, prompts, **kwargs)
    cached = counting_prefixes(monkeypatch)
    generate_module.StaticDecoder._made.clear()
    monkeypatch.setattr(generate_module, "compiling", lambda model: True)
    monkeypatch.setattr(generate_module, "compile_fn", lambda fn, **kwargs: fn)  # the eager steps: a CPU
    try:
        got = generate_greedy(model, tok, prompts, **kwargs)
    finally:
        generate_module.StaticDecoder._made.clear()
    assert got == ref and cached == []


def test_prompts_cut_to_the_window_share_what_they_kept(peaked, monkeypatch):
    model, tok = peaked
    # Two long queries lose the first shot to the window; the short ones keep every shot.
    long = "### Input_1: " + " ".join(["anna has a big cup in the hall ."] * 5) + "\n### Inference:"
    prompts = fixed_prompts(queries=[*QUERIES[:3], long, long.replace("Inference", "Inference (2)")])
    whole = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    limit = max(whole[:3]) + 12
    assert limit < min(whole[3:]) and max(whole) < limit + 30
    monkeypatch.setattr(model.config, "max_position_embeddings", limit + 10)
    kwargs = {"max_new_tokens": 10, "stop": "\n", "batch_size": 4, "decoder": "generate", "return_truncated": True}
    ref, ref_cut = generate_greedy(model, tok, prompts, **kwargs)
    cached = counting_prefixes(monkeypatch)
    got, cut = generate_greedy(model, tok, prompts, shared_prefix=True, **kwargs)
    assert got == ref and cut == ref_cut and cut[3] > 0 and cut[0] == 0
    assert len(cached) == 2  # the whole prompts' shots, and the cut prompts' two last shots


def test_fixed_shots_are_one_set_per_eval_set_and_format(tmp_path):
    import pandas as pd

    data = write_eval_data(tmp_path, names=("toy_nli",))
    task = get_dataset("toy_nli").task
    items = pd.read_parquet(data / "eval/toy_nli.parquet").to_dict("records")
    pool = pd.read_parquet(data / "fewshot/toy_nli.parquet").to_dict("records")

    def build(fmt, fewshot, seed=0):
        return build_prompts(task, items, pool, fmt, 2, seed, "toy_nli", fewshot)

    def head(prompt):  # the demonstrations: everything before the query
        return prompt[: prompt.part_starts[-1]]

    fixed = build("default", "fixed")
    assert len({head(p) for p in fixed}) == 1 and len(set(fixed)) == len(items)
    assert head(build("default", "fixed")[0]) == head(fixed[0])  # seeded
    assert head(build("default", "fixed", seed=1)[0]) != head(fixed[0])
    # Each format draws its own set: the instruct prompts do not show the default format's shots.
    assert len({head(p) for p in build("instruct", "fixed")}) == 1
    assert len({head(p) for p in build("default", "per_item")}) > 1
    with pytest.raises(ValueError, match="evaluate.fewshot: 'shared'"):
        build("default", "shared")


def test_evaluate_with_fixed_shots_scores_as_without_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    from ptft.evaluate import run

    data = write_eval_data(tmp_path)
    meta = {"model": "ft/x", "checkpoint": "x", "train_task": "toy_nli", "method": "full", "lr": 0.001, "seed": 0,
            "shots": 3}  # fmt: skip
    evaluations = [{"eval_set": "toy_nli", "relation": "in-domain", "formats": ["default"]},
                   {"eval_set": "toy_summary", "relation": "cross-task", "formats": ["default"]}]  # fmt: skip
    cfg = {"batch_size": 4, "max_new_tokens": {"classification": 5, "generation": 6}, "stop": "\n",
           "rouge_stemmer": False, "fewshot": "fixed"}  # fmt: skip
    got = run.evaluate_model(tiny_model_dir, meta, evaluations, data, cfg, seed=0)
    real = prefix_module.shared_prefix_groups
    monkeypatch.setattr(prefix_module, "shared_prefix_groups", lambda e: real(e, 10**9))
    ref = run.evaluate_model(tiny_model_dir, meta, evaluations, data, cfg, seed=0)
    assert got["prediction"].tolist() == ref["prediction"].tolist()
    np.testing.assert_allclose(np.concatenate(got["label_logprobs"].tolist()).astype(float),
                               np.concatenate(ref["label_logprobs"].tolist()).astype(float), atol=1e-4)  # fmt: skip
    assert got.groupby(["eval_set", "format"])["prompt_hash"].nunique().eq(6).all()
