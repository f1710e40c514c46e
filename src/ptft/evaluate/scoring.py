"""Scoring one eval set in one format: the prompts, and the per-example metrics by the task kind's scorer."""

from __future__ import annotations

import random

from ptft.data.prompts import completion, few_shot_prompt
from ptft.evaluate.scorers import get_scorer

FEWSHOT = ("per_item", "fixed")


def build_prompts(task, items: list[dict], pool: list[dict], fmt: str, shots: int, seed: int, eval_set: str,
                  fewshot: str = "per_item"):  # fmt: skip
    """One prompt per item, with ``shots`` demonstrations from the eval set's few-shot pool.

    ``fewshot`` (``evaluate.fewshot``): ``per_item`` draws each item's own shots with an RNG seeded
    by (seed, set, item); ``fixed`` draws one set of shots, seeded by (seed, set, format), for every
    item of the set in that format, as the Amuro & Char release did, but from the pool, which is
    disjoint from the scored items (the release drew from the scored split itself, so an item could
    be its own demonstration). Then the prompts share their beginning, whose KV cache the scorers
    compute once (:mod:`ptft.evaluate.prefix`).
    """
    if fewshot not in FEWSHOT:
        raise ValueError(f"evaluate.fewshot: {fewshot!r} is not one of {', '.join(FEWSHOT)}")
    if shots > len(pool):
        raise ValueError(f"eval set {eval_set!r}: {shots} shots requested but its few-shot pool (data/fewshot/"
                         f"{eval_set}.parquet) has {len(pool)} examples, as its split is smaller than "
                         f"data.fewshot_pool_size; lower evaluate.shots (or finetuned_shots)")  # fmt: skip
    if fewshot == "fixed":
        fixed = random.Random(f"{seed}:{eval_set}:{fmt}").sample(pool, shots) if shots else []
        return [few_shot_prompt(task, fixed, item, fmt) for item in items]
    prompts = []
    for item in items:
        rng = random.Random(f"{seed}:{eval_set}:{item['idx']}")
        prompts.append(few_shot_prompt(task, rng.sample(pool, shots) if shots else [], item, fmt))
    return prompts


def score_items(model, tokenizer, task, items, prompts, cfg) -> list[dict]:
    """Per-example result columns (one dict per metric of ``task``) of one eval set in one format.

    The scorer is the one registered for ``task.kind`` (:mod:`ptft.evaluate.scorers`); a kind
    without one (chat, text) or a metric its scorer does not produce is an error.
    """
    scorer = get_scorer(task.kind)
    missing = [m for m in task.metrics if m not in scorer.metrics]
    if missing:
        raise ValueError(
            f"task type {task.name!r} names {', '.join(missing)}, which the {task.kind} scorer does not produce "
            f"(it produces {', '.join(scorer.metrics)})"
        )
    golds = [completion(task, r) for r in items]
    return scorer.score(model, tokenizer, task, items, prompts, golds, cfg)
