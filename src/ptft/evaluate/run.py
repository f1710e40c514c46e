"""Evaluate one model on all its eval sets and formats, loading it once.

    ptft evaluate --model-dir results/toy/checkpoints/step300 --model '<json metadata>' \
        --evaluations '<json list of {eval_set, relation, formats}>' --data-dir results/toy/data \
        --config '<json>' --out predictions.parquet

Each model is scored with ``shots`` in-context examples (its metadata) drawn from the eval
set's few-shot pool, disjoint from the scored items. Each task kind is scored by its scorer
(:mod:`ptft.evaluate.scorers`): classification by TokenProb (or an ablation, see classify),
generation by greedy decoding scored by ROUGE-L, multiple choice by the summed log-likelihood of
each choice (``acc`` and ``acc_norm``, lm-evaluation-harness definitions); the metrics are defined in
:mod:`ptft.evaluate.metrics`. One row per example, with enough (prompt hash, prediction, gold,
label log-probabilities) to recompute any table.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ptft import io
from ptft.checkpoints.load import load_pretrained
from ptft.data.registry import get_dataset
from ptft.evaluate.scoring import build_prompts, score_items

log = logging.getLogger(__name__)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha1(prompt.encode()).hexdigest()[:16]


def model_metadata(model_dir: str | Path, meta: dict) -> dict:
    """The plan's metadata of the model at ``model_dir``, with the lr of an lr selection's pointer.

    A selected model is planned before its grid has run, so its lr is known only from the
    selection (``ptft select-lr``'s JSON pointer, given as the model directory).
    """
    pointer = io.read_json(model_dir) if str(model_dir).endswith(".json") else {}
    if pointer.get("selected"):
        return {**meta, "lr": pointer["lr"]}
    return meta


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
        for result in score_items(model, tokenizer, task, items, prompts, cfg):
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
