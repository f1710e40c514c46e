"""The mechanistic study's per-model jobs: layer probes and one-shot neuron pruning (Jain et al. 2024).

    ptft probe-layers --model-dir M --model '<json metadata>' --train data/train/D.parquet \
        --test data/eval/D.parquet --config '<mechanistic.layer_probes>' --seed 42 --out layer_probes.parquet
    ptft prune-neurons --model-dir M --model '<json metadata>' --train data/train/D.parquet --data-dir data \
        --evaluations '<json>' --config '<mechanistic.pruning>' --scoring '<evaluate>' --seed 42 --out pruning.parquet

Both read the answer where the model gives it: the prompt is the dataset's zero-shot prompt in its
first format, encoded as evaluation encodes it (``evaluate.add_bos``), and the answer position is
the prompt's last token, whose next-token prediction is the answer.

Both write one row per test example (its correctness), not the accuracies: the analysis
``mechanistic`` computes each value and its bootstrap interval with the study's ``aggregate``
settings, so the tables can be rebuilt without the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ptft.checkpoints.load import load_pretrained
from ptft.data.prompts import few_shot_prompt
from ptft.data.registry import get_dataset
from ptft.evaluate.encoding import encode_prompts
from ptft.evaluate.run import model_metadata

log = logging.getLogger(__name__)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _prompt_ids(tokenizer, dataset: str, records: list[dict], add_bos) -> list[list[int]]:
    task = get_dataset(dataset).task
    fmt = next(iter(task.formats))
    return encode_prompts(tokenizer, [few_shot_prompt(task, [], r, fmt) for r in records], add_bos)


def answer_features(model, tokenizer, ids: list[list[int]], batch_size: int) -> torch.Tensor:
    """The residual stream at each prompt's last token: (layers + 1, n, d), float32 on the CPU."""
    from ptft.interpret.layers import residual_stream

    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    parts = []
    for start in tqdm(range(0, len(ids), batch_size), desc="features", mininterval=5):
        chunk = ids[start : start + batch_size]
        width = max(map(len, chunk))
        # Right padding: causal attention keeps every real token blind to the pads after it.
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunk], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=device)
        positions = torch.tensor([len(x) - 1 for x in chunk], device=device)
        parts.append(residual_stream(model, input_ids, mask, positions))
    return torch.cat(parts, dim=1)


def probe_model(model_dir: str | Path, meta: dict, train: str | Path, test: str | Path, cfg: dict,
                seed: int, add_bos="auto") -> pd.DataFrame:  # fmt: skip
    """Per target of ``cfg["targets"]`` and layer, a linear probe fitted on the training records'
    features and scored on the test records: one row per (target, layer, test example)."""
    from ptft.interpret.linear_probe import probe_layers

    dataset = cfg["dataset"]
    n_classes = len(get_dataset(dataset).task.labels)
    if n_classes < 2:
        raise ValueError(f"mechanistic.layer_probes.dataset: {dataset!r} has no label set to probe for")
    train_records = pd.read_parquet(train).head(cfg["train_examples"]).to_dict("records")
    test_records = pd.read_parquet(test).to_dict("records")
    for name, column in cfg["targets"].items():
        if column not in train_records[0]:
            raise ValueError(f"mechanistic.layer_probes.targets.{name}: column {column!r} is not in the records of "
                             f"{dataset!r} (columns: {sorted(train_records[0])})")  # fmt: skip
    model, tokenizer = load_pretrained(model_dir, dtype=torch.float32, device=_device())
    model.eval()
    features = answer_features(model, tokenizer, _prompt_ids(tokenizer, dataset, train_records, add_bos), 64)
    features_test = answer_features(model, tokenizer, _prompt_ids(tokenizer, dataset, test_records, add_bos), 64)
    meta = model_metadata(model_dir, meta)
    frames = []
    for name, column in cfg["targets"].items():
        y, y_test = ([int(r[column]) for r in rows] for rows in (train_records, test_records))
        # A record without this target's answer (-1: e.g. fewer occurrences than an index task needs) is left out.
        keep, keep_test = [i for i, v in enumerate(y) if v >= 0], [i for i, v in enumerate(y_test) if v >= 0]
        rows = probe_layers(features[:, keep], torch.tensor([y[i] for i in keep]), features_test[:, keep_test],
                            torch.tensor([y_test[i] for i in keep_test]), n_classes, iters=cfg["iters"], lr=cfg["lr"],
                            batch_size=cfg["batch_size"], seed=seed)  # fmt: skip
        for row in rows:
            log.info("%s target %s layer %d: probe accuracy %.3f (n=%d)", meta["model"], name, row["layer"],
                     row["accuracy"], row["n"])  # fmt: skip
            frames.append(pd.DataFrame({
                **{k: [v] * row["n"] for k, v in meta.items()},
                "dataset": dataset, "target": name, "layer": row["layer"],
                "example_id": [int(test_records[i]["idx"]) for i in keep_test], "correct": row["correct"],
            }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def _loss_batches(tokenizer, dataset: str, records: list[dict], batch_size: int, device) -> list[dict]:
    """The dataset's training examples as causal-LM batches with the loss on the completion only."""
    from ptft.finetune.batching import collate_padded, encode_examples

    task = get_dataset(dataset).task
    examples = encode_examples(tokenizer, task, records, next(iter(task.formats)), max_length=2048)
    return [collate_padded(examples[i : i + batch_size], tokenizer.pad_token_id, device)
            for i in range(0, len(examples), batch_size)]  # fmt: skip


def prune_model(model_dir: str | Path, meta: dict, train: str | Path, data_dir: str | Path, evaluations: list[dict],
                cfg: dict, scoring: dict, seed: int, stop=None) -> pd.DataFrame:  # fmt: skip
    """Rank the MLP neurons by weight × gradient of the loss on ``cfg["dataset"]``'s training records (each
    ranking of ``cfg["rankings"]``: ``magnitude``, Jain et al.'s |·|, or ``decrease``), then, for each K of
    ``cfg["ks"]``, score ``evaluations`` with the top K zeroed: one row per (ranking, K, eval set, format,
    example, metric), the evaluation's columns with ``ranking``, ``k`` and ``neurons``."""
    from ptft.evaluate.run import score_part
    from ptft.interpret.pruning import first_order_decrease, ranked, top_neurons, zeroed_neurons

    model, tokenizer = load_pretrained(model_dir, dtype=torch.float32, device=_device())
    model.eval()
    records = pd.read_parquet(train).head(cfg["examples"]).to_dict("records")
    batches = _loss_batches(tokenizer, cfg["dataset"], records, 32, next(model.parameters()).device)
    decrease = first_order_decrease(model, batches)
    meta = {**model_metadata(model_dir, meta), "shots": 0}
    frames, unpruned = [], {}
    jobs = [(r, k) for r in cfg.get("rankings", ["magnitude"]) for k in sorted(set(cfg["ks"]))]
    for ranking, k in tqdm(jobs, desc=f"prune {meta['model']}"):
        neurons = top_neurons(ranked(decrease, ranking), k)
        with zeroed_neurons(model, neurons):
            for ev in evaluations:
                for fmt in ev["formats"]:
                    # K = 0 is the model as trained, whatever the ranking: scored once.
                    key = (ev["eval_set"], fmt)
                    part = unpruned.get(key) if k == 0 else None
                    if part is None:
                        part = score_part(model, tokenizer, meta, ev, fmt, Path(data_dir), scoring, seed)
                    if k == 0:
                        unpruned[key] = part
                    frames.append(part.assign(ranking=ranking, k=k,
                                              neurons=" ".join(f"{layer}:{n}" for layer, n in neurons)))  # fmt: skip
                    first = part["metric"].iloc[0]
                    log.info("%s %s k=%d %s: mean %s %.3f", meta["model"], ranking, k, ev["eval_set"], first,
                             part.loc[part["metric"] == first, "score"].mean())  # fmt: skip
        if stop is not None:
            stop.check()
    return pd.concat(frames, ignore_index=True)
