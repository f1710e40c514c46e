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

A preempted job loses only the part it was scoring: each finished (eval set, format) part is
written to the state directory (``results/<study>/.state/evaluate/<model id>/``, outside the
rule's outputs) under its fingerprint, reused by the re-run and removed once
``predictions.parquet`` is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ptft import io
from ptft.checkpoints.load import SPLIT, load_pretrained
from ptft.data.registry import get_dataset
from ptft.evaluate.forward import set_compile
from ptft.evaluate.metrics import get_metric
from ptft.evaluate.scoring import build_prompts, score_items
from ptft.provenance import checkpoint_identity, file_digest, sha256_text
from ptft.signals import StopRequested

log = logging.getLogger(__name__)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha1(prompt.encode()).hexdigest()[:16]


def model_metadata(model_dir: str | Path, meta: dict) -> dict:
    """The plan's metadata of the model at ``model_dir``, with what only the model knows.

    A selected model is planned before its grid has run, so its lr is known only from the
    selection (``ptft select-lr``'s JSON pointer, given as the model directory). ``ft_step`` is
    the optimizer step of the fine-tuned weights (``ptft_run.json``; 0 for a pre-training checkpoint).
    """
    pointer = io.read_json(model_dir) if str(model_dir).endswith(".json") else {}
    if pointer.get("selected"):
        meta = {**meta, "lr": pointer["lr"]}
    return {**meta, "ft_step": ft_step(pointer.get("path") if pointer.get("selected") else model_dir)}


def ft_step(model_dir: str | Path | None) -> int:
    """The fine-tuning step of a saved model: ``ptft_run.json``'s, or 0 where there is none (a checkpoint)."""
    # Beside the weights of every model a fine-tuning run saves: its ft_step.
    from ptft.finetune.snapshots import RUN_FILE

    path = Path(model_dir) / RUN_FILE if model_dir is not None else None
    if path is None or not path.is_file():
        return 0
    return int(io.read_json(path)["ft_step"])


def snapshot_dirs(source: str | Path) -> list[tuple[int, Path]]:
    """(ft_step, folder) of each snapshot of a run, by step: ``source`` is the run's ``snapshots``
    folder, or an lr selection's pointer (then the chosen run's)."""
    source = Path(source)
    if source.suffix == ".json":
        source = Path(io.read_json(source)["path"]).parent / "snapshots"
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no snapshots folder; was the run trained with finetune.snapshots, and "
                                "has it been deleted (snapshots.keep: false) before being evaluated?")  # fmt: skip
    found = sorted((ft_step(d), d) for d in source.iterdir() if d.is_dir() and d.name.startswith("step"))
    if not found:
        raise FileNotFoundError(f"{source}: the run saved no snapshot")
    return found


def evaluate_trajectory(source: str | Path, meta: dict, evaluations: list[dict], data_dir: str | Path, cfg: dict,
                        seed: int, state_dir: str | Path | None = None, stop: StopRequested | None = None,
                        gpus: int = 1):  # fmt: skip
    """Score every snapshot of a run (:func:`snapshot_dirs`) as :func:`evaluate_model` scores a model.

    Each snapshot is a model of its own, ``<model id>/snapshots/step<N>`` with ``ft_step`` N, so
    that a row says which weights made it; its finished parts wait in ``<state_dir>/step<N>``.
    """
    frames = []
    # An lr selection's lr is known only from its pointer, as for its final model (model_metadata).
    selected = {"lr": io.read_json(source)["lr"]} if str(source).endswith(".json") else {}
    for step, folder in snapshot_dirs(source):
        snap = {**meta, "model": f"{meta['model']}/snapshots/step{step}", "ft_step": step, **selected}
        parts = Path(state_dir) / f"step{step}" if state_dir is not None else None
        frames.append(evaluate_model(folder, snap, evaluations, data_dir, cfg, seed, parts, stop, gpus))
    return pd.concat(frames, ignore_index=True)


def part_fingerprint(model: str, meta: dict, ev: dict, fmt: str, data_dir: Path, cfg: dict, seed: int) -> str:
    """What one (eval set, format) part's rows depend on: the model (``model``, its
    :func:`ptft.provenance.checkpoint_identity`), the part's settings and its data files' bytes."""
    eval_set, shots = ev["eval_set"], int(meta["shots"])
    files = [data_dir / folder / f"{eval_set}.parquet" for folder in ("eval", "fewshot")[: 2 if shots else 1]]
    settings = {"model": model, "meta": meta, "eval_set": eval_set, "relation": ev["relation"], "format": fmt,
                "shots": shots, "seed": seed, "scoring": cfg, "data": [file_digest(f) for f in files]}  # fmt: skip
    return sha256_text(json.dumps(settings, sort_keys=True, default=str))


def score_part(model, tokenizer, meta: dict, ev: dict, fmt: str, data_dir: Path, cfg: dict, seed: int) -> pd.DataFrame:
    """The rows of one eval set in one format: one per example and metric."""
    eval_set, shots = ev["eval_set"], int(meta["shots"])
    task = get_dataset(eval_set).task
    items = pd.read_parquet(data_dir / "eval" / f"{eval_set}.parquet").to_dict("records")
    pool = pd.read_parquet(data_dir / "fewshot" / f"{eval_set}.parquet").to_dict("records") if shots else []
    prompts = build_prompts(task, items, pool, fmt, shots, seed, eval_set, cfg.get("fewshot", "per_item"))
    frames = []
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
        metric = get_metric(result["metric"])
        value = (metric.corpus(result["prediction"], result["gold"]) if metric.aggregation == "corpus"
                 else sum(result["score"]) / len(items))  # fmt: skip
        log.info("%s %s %s: %s = %.3f", meta["model"], eval_set, fmt, result["metric"], value)
    return pd.concat(frames, ignore_index=True)


def evaluate_model(
    model_dir: str | Path,
    meta: dict,
    evaluations: list[dict],
    data_dir: str | Path,
    cfg: dict,
    seed: int,
    state_dir: str | Path | None = None,
    stop: StopRequested | None = None,
    gpus: int = 1,
) -> pd.DataFrame:
    """Score one model on ``evaluations`` ({eval_set, relation, formats}); one row per example and metric.

    ``gpus`` > 1 (``evaluate.gpus``): a model too large for one GPU is split by layers over the
    GPUs (``device_map="auto"``, :func:`ptft.checkpoints.load.load_pretrained`), as lm-eval's
    ``parallelize=True`` does; the layers then run one GPU after the other, so it is no faster.

    With ``state_dir``, each finished (eval set, format) part is written there, named by its
    :func:`part_fingerprint`, and a re-run reuses the parts whose fingerprint matches (the model
    is loaded only if a part is left to score). ``stop`` (the command's handler) is checked
    between parts, in case a library swallowed its :class:`~ptft.signals.Interrupted`.
    """
    data_dir = Path(data_dir)
    identity = checkpoint_identity(model_dir) if state_dir is not None else ""
    model = tokenizer = None
    frames = []
    jobs = [(e, f) for e in evaluations for f in e["formats"]]
    tasks = [get_dataset(e["eval_set"]).task for e in evaluations]
    if len({len(t.labels) for t in tasks if t.kind == "sequence_classification"}) > 1:
        raise ValueError(f"evaluate {meta['model']}: its eval sets have classifier heads of different sizes "
                         f"({', '.join(e['eval_set'] for e in evaluations)}); a model has one head")  # fmt: skip
    for ev, fmt in tqdm(jobs, desc=f"evaluate {meta['model']}", mininterval=5):
        path = None
        if state_dir is not None:
            digest = part_fingerprint(identity, meta, ev, fmt, data_dir, cfg, seed)
            path = Path(state_dir) / f"{ev['eval_set']}.{fmt}.{digest[:16]}.parquet"
            part = read_part(path)
            if part is not None:
                log.info("reusing finished part %s %s of %s from %s", ev["eval_set"], fmt, meta["model"], path)
                frames.append(part)
                continue
        if model is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            heads_of = {len(t.labels) for t in tasks if t.kind == "sequence_classification"}
            if heads_of:  # a classifier (a declared classification dataset) is scored by its own head
                from ptft.finetune.heads import load_classifier

                # A classifier is small (the LP-FT study's RoBERTa): it stays on one device.
                model, tokenizer = load_classifier(model_dir, heads_of.pop(), dtype=dtype, device=device)
            else:
                model, tokenizer = load_pretrained(model_dir, dtype=dtype, device=SPLIT if gpus > 1 else device)
            model.eval()
            set_compile(model, cfg.get("compile", "auto"))
        part = score_part(model, tokenizer, meta, ev, fmt, data_dir, cfg, seed)
        if path is not None:
            io.write_parquet(path, part)
            # Read back, so that a part scored now and one reused later enter the table alike.
            part = pd.read_parquet(path)
        frames.append(part)
        if stop is not None:
            stop.check()
    df = pd.concat(frames, ignore_index=True)
    df["lr"] = df["lr"].astype("float64")
    for column in ("seed", "train_size", "ft_step"):
        if column in df:
            df[column] = df[column].astype("Int64")
    if "parent" in df:
        df["parent"] = df["parent"].astype("string")
    return df


def read_part(path: Path) -> pd.DataFrame | None:
    """A finished part, or None if there is none (or it cannot be read: then it is scored again)."""
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - written atomically, so this is a damaged disk or a foreign file
        log.warning("finished part %s cannot be read (%s); scoring it again", path, err)
        return None


def remove_parts(state_dir: str | Path) -> None:
    """The finished parts, once predictions.parquet holds them (and any of an older fingerprint)."""
    state_dir = Path(state_dir)
    for path in [*state_dir.glob("*.parquet"), *state_dir.glob("step*/*.parquet")]:
        path.unlink()
    for folder in [*state_dir.glob("step*"), state_dir]:
        with contextlib.suppress(OSError):
            folder.rmdir()
