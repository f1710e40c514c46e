"""Evaluate one model on all its eval sets and formats, loading it once.

    ptft evaluate --model-dir results/toy/checkpoints/step300 --model '<json metadata>' \
        --eval-sets toy_nli toy_summary --data-dir results/toy/data --config '<json>' --out predictions.parquet

Base checkpoints are scored with ``shots`` in-context examples drawn from the eval set's
few-shot pool (disjoint from the scored items), fine-tuned models zero-shot. Classification
uses TokenProb, generation greedy decoding scored by ROUGE-L. One row per example, with
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
from transformers import AutoModelForCausalLM, AutoTokenizer

from ptft.data.prompts import completion, few_shot_prompt
from ptft.data.registry import get_dataset
from ptft.evaluate.generate import generate_greedy
from ptft.evaluate.metrics import accuracy, rouge_l
from ptft.evaluate.tokenprob import score_token_prob
from ptft.plan import relation

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


def evaluate_model(
    model_dir: str | Path, meta: dict, eval_sets: list[str], data_dir: str | Path, cfg: dict, seed: int
) -> pd.DataFrame:
    data_dir = Path(data_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    shots = int(meta["shots"])
    frames = []
    jobs = [(e, f) for e in eval_sets for f in cfg["formats"]]
    for eval_set, fmt in tqdm(jobs, desc=f"evaluate {meta['model']}", mininterval=5):
        spec = get_dataset(eval_set)
        task = spec.task
        items = pd.read_parquet(data_dir / "eval" / f"{eval_set}.parquet").to_dict("records")
        pool = pd.read_parquet(data_dir / "fewshot" / f"{eval_set}.parquet").to_dict("records") if shots else []
        prompts = build_prompts(task, items, pool, fmt, shots, seed, eval_set)
        golds = [completion(task, r) for r in items]
        if task.kind == "classification":
            pred_idx, logprobs = score_token_prob(model, tokenizer, prompts, task.labels, cfg["batch_size"])
            predictions = [task.labels[i] for i in pred_idx]
            scores = accuracy(predictions, golds)
            label_logprobs = [list(map(float, row)) for row in logprobs]
        else:
            predictions = generate_greedy(
                model, tokenizer, prompts, cfg["max_new_tokens"]["generation"], cfg["stop"], cfg["batch_size"]
            )
            scores = rouge_l(predictions, golds, stemmer=cfg["rouge_stemmer"])
            label_logprobs = [[] for _ in items]
        frames.append(
            pd.DataFrame(
                {
                    **{k: [v] * len(items) for k, v in meta.items()},
                    "eval_set": eval_set,
                    "eval_task": task.name,
                    "eval_kind": task.kind,
                    "format": fmt,
                    "relation": relation(meta["train_task"], eval_set),
                    "example_id": [int(r["idx"]) for r in items],
                    "prompt_hash": [prompt_hash(p) for p in prompts],
                    "prediction": predictions,
                    "gold": golds,
                    "metric": task.metric,
                    "score": scores,
                    "label_logprobs": label_logprobs,
                }
            )
        )
        log.info("%s %s %s: %s = %.3f", meta["model"], eval_set, fmt, task.metric, sum(scores) / len(scores))
    df = pd.concat(frames, ignore_index=True)
    df["lr"] = df["lr"].astype("float64")
    df["seed"] = df["seed"].astype("Int64")
    return df
