"""Evaluate one model on all its eval sets and formats, loading it once.

    ptft evaluate --model-dir results/toy/checkpoints/step300 --model '<json metadata>' \
        --evaluations '<json list of {eval_set, relation, formats}>' --data-dir results/toy/data \
        --config '<json>' --out predictions.parquet

Each model is scored with ``shots`` in-context examples (its metadata) drawn from the eval
set's few-shot pool, disjoint from the scored items. Classification uses TokenProb (or an ablation, see classify),
generation greedy decoding scored by ROUGE-L, multiple choice the summed log-likelihood of
each choice (``acc`` and ``acc_norm``, lm-evaluation-harness definitions). One row per example, with
enough (prompt hash, prediction, gold, label log-probabilities) to recompute any table.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ptft.checkpoints.load import load_pretrained
from ptft.data.prompts import completion, few_shot_prompt
from ptft.data.registry import get_dataset
from ptft.evaluate.classify import classify
from ptft.evaluate.generate import generate_greedy
from ptft.evaluate.metrics import accuracy, rouge_l
from ptft.evaluate.multiple_choice import mc_predictions, score_multiple_choice

log = logging.getLogger(__name__)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha1(prompt.encode()).hexdigest()[:16]


def build_prompts(task, items: list[dict], pool: list[dict], fmt: str, shots: int, seed: int, eval_set: str):
    """One prompt per item; each item draws its own shots with an RNG seeded by (seed, set, item)."""
    if shots > len(pool):
        raise ValueError(f"eval set {eval_set!r}: {shots} shots requested but the few-shot pool has {len(pool)}")
    prompts = []
    for item in items:
        rng = random.Random(f"{seed}:{eval_set}:{item['idx']}")
        prompts.append(few_shot_prompt(task, rng.sample(pool, shots) if shots else [], item, fmt))
    return prompts


def _score(model, tokenizer, task, items, prompts, cfg) -> list[dict]:
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


def evaluate_model(
    model_dir: str | Path, meta: dict, evaluations: list[dict], data_dir: str | Path, cfg: dict, seed: int
) -> pd.DataFrame:
    """Score one model on ``evaluations`` ({eval_set, relation, formats}); one row per example and metric."""
    data_dir = Path(data_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tokenizer = load_pretrained(model_dir, dtype=dtype, device=device)
    model.eval()
    shots = int(meta["shots"])
    frames = []
    jobs = [(e, f) for e in evaluations for f in e["formats"]]
    for ev, fmt in tqdm(jobs, desc=f"evaluate {meta['model']}", mininterval=5):
        eval_set = ev["eval_set"]
        task = get_dataset(eval_set).task
        items = pd.read_parquet(data_dir / "eval" / f"{eval_set}.parquet").to_dict("records")
        pool = pd.read_parquet(data_dir / "fewshot" / f"{eval_set}.parquet").to_dict("records") if shots else []
        prompts = build_prompts(task, items, pool, fmt, shots, seed, eval_set)
        for result in _score(model, tokenizer, task, items, prompts, cfg):
            frames.append(
                pd.DataFrame(
                    {
                        **{k: [v] * len(items) for k, v in meta.items()},
                        "eval_set": eval_set,
                        "eval_task": task.name,
                        "eval_kind": task.kind,
                        "format": fmt,
                        "relation": ev["relation"],
                        "example_id": [int(r["idx"]) for r in items],
                        "prompt_hash": [prompt_hash(p) for p in prompts],
                        **result,
                    }
                )
            )
            mean = sum(result["score"]) / len(items)
            log.info("%s %s %s: %s = %.3f", meta["model"], eval_set, fmt, result["metric"], mean)
    df = pd.concat(frames, ignore_index=True)
    df["lr"] = df["lr"].astype("float64")
    df["seed"] = df["seed"].astype("Int64")
    return df
