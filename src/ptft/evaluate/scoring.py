"""Scoring one eval set in one format: the prompts, and the per-example metrics by the task kind's scorer."""

from __future__ import annotations

import random

from ptft.data.prompts import completion, few_shot_prompt
from ptft.evaluate.scorers import get_scorer


def build_prompts(task, items: list[dict], pool: list[dict], fmt: str, shots: int, seed: int, eval_set: str):
    """One prompt per item; each item draws its own shots with an RNG seeded by (seed, set, item)."""
    if shots > len(pool):
        raise ValueError(f"eval set {eval_set!r}: {shots} shots requested but its few-shot pool (data/fewshot/"
                         f"{eval_set}.parquet) has {len(pool)} examples, as its split is smaller than "
                         f"data.fewshot_pool_size; lower evaluate.shots (or finetuned_shots)")  # fmt: skip
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
