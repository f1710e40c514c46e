"""Scoring one eval set in one format: the prompts, and per task kind the per-example metrics."""

from __future__ import annotations

import random

from ptft.data.prompts import completion, few_shot_prompt
from ptft.evaluate.classify import classify
from ptft.evaluate.generate import generate_greedy
from ptft.evaluate.metrics import accuracy, rouge_l
from ptft.evaluate.multiple_choice import mc_predictions, score_multiple_choice


def build_prompts(task, items: list[dict], pool: list[dict], fmt: str, shots: int, seed: int, eval_set: str):
    """One prompt per item; each item draws its own shots with an RNG seeded by (seed, set, item)."""
    if shots > len(pool):
        raise ValueError(f"eval set {eval_set!r}: {shots} shots requested but the few-shot pool has {len(pool)}")
    prompts = []
    for item in items:
        rng = random.Random(f"{seed}:{eval_set}:{item['idx']}")
        prompts.append(few_shot_prompt(task, rng.sample(pool, shots) if shots else [], item, fmt))
    return prompts


def score_items(model, tokenizer, task, items, prompts, cfg) -> list[dict]:
    """Per-example result columns (one dict per metric) of one eval set in one format."""
    golds = [completion(task, r) for r in items]
    if task.kind == "classification":
        predictions, logprobs = classify(model, tokenizer, prompts, task.labels, cfg)
        return [
            {
                "metric": task.metric,
                "prediction": predictions,
                "gold": golds,
                "score": accuracy(predictions, golds),
                "label_logprobs": [list(map(float, r)) for r in logprobs],
            }
        ]
    if task.kind == "multiple_choice":
        choices = [list(r["choices"]) for r in items]
        lls = score_multiple_choice(model, tokenizer, prompts, choices, cfg["batch_size"])
        picks = [mc_predictions(ll, c) for ll, c in zip(lls, choices, strict=True)]
        out = []
        for metric in task.metrics:
            idx = [p[metric] for p in picks]
            scores = [float(i == int(r["label"])) for i, r in zip(idx, items, strict=True)]
            predictions = [c[i] for c, i in zip(choices, idx, strict=True)]
            out.append(
                {
                    "metric": metric,
                    "prediction": predictions,
                    "gold": golds,
                    "score": scores,
                    "label_logprobs": [list(map(float, ll)) for ll in lls],
                }
            )
        return out
    predictions = generate_greedy(
        model, tokenizer, prompts, cfg["max_new_tokens"]["generation"], cfg["stop"], cfg["batch_size"]
    )
    return [
        {
            "metric": task.metric,
            "prediction": predictions,
            "gold": golds,
            "score": rouge_l(predictions, golds, stemmer=cfg["rouge_stemmer"]),
            "label_logprobs": [[] for _ in items],
        }
    ]
