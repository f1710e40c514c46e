"""Supervised fine-tuning of one checkpoint on one task: one loop, read top to bottom.

    ptft finetune --checkpoint results/toy/checkpoints/step300 --train results/toy/data/train/toy_nli.parquet \
        --task toy_nli --config '<json of the finetune section>' --lr 1e-3 --seed 0 \
        --out results/toy/finetune/.../model --state-dir results/toy/.state/finetune/...

Loss on completion tokens only (prompt and padding are masked), AdamW, linear schedule with
warmup. Batches are drawn from length-sorted buckets so little compute goes into padding.
The training state (model, optimizer, step, RNG) is saved every ``save_every`` optimizer
steps to ``--state-dir``, outside the rule's declared outputs, and a re-run resumes from it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ptft import io
from ptft.checkpoints.load import load_pretrained
from ptft.data.prompts import chat_segments, completion, join_prompt_completion, render_prompt
from ptft.data.registry import get_dataset

log = logging.getLogger(__name__)
IGNORE = -100


def segments(task, record: dict, fmt: str) -> list[tuple[str, bool]]:
    """(text, trained on) pieces of one example: prompt then completion, or a chat transcript."""
    if task.kind == "chat":
        return chat_segments(record["messages"])
    prompt, target = join_prompt_completion(render_prompt(task, record, fmt), completion(task, record))
    return [(prompt, False), (target, True)]


def encode_examples(tokenizer, task, records, fmt: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record: untrained tokens masked, EOS after every trained piece."""
    out = []
    for r in records:
        ids, labels = [], []
        for text, trained in segments(task, r, fmt):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            if trained:
                piece = piece + [tokenizer.eos_token_id]
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        out.append((ids[:max_length], labels[:max_length]))
    return out


def make_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length examples: shuffle, sort within chunks of 50 batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples, pad_id: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def linear_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak lr: linear warmup over ``warmup`` steps, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def finetune(
    checkpoint: str | Path,
    train_path: str | Path,
    task_name: str,
    cfg: dict,
    lr: float,
    seed: int,
    out_dir: str | Path,
    state_dir: str | Path,
) -> dict:
    """Fine-tune and write ``out_dir/model`` (save_pretrained), ``train_log.parquet``, ``summary.json``."""
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    task = get_dataset(task_name).task
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # fp32 master weights; bf16 runs autocast the forward pass (mixed precision, as the paper's bf16).
    model, tokenizer = load_pretrained(checkpoint, dtype=torch.float32, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.get("precision") == "bf16")
    records = pd.read_parquet(train_path).to_dict("records")
    examples = encode_examples(tokenizer, task, records, cfg["format"], cfg["max_length"])
    lengths = [len(ids) for ids, _ in examples]

    micro = cfg["batch_size"]
    accum = cfg["grad_accum"]
    epochs = cfg["epochs"]
    steps_per_epoch = math.ceil(len(examples) / micro)
    total_micro = math.ceil(steps_per_epoch * epochs)
    total_steps = math.ceil(total_micro / accum)
    if cfg.get("max_steps"):
        total_steps = min(total_steps, cfg["max_steps"])
    warmup = max(1, round(cfg["warmup_ratio"] * total_steps))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg["weight_decay"])

    state_path = state_dir / "state.pt"
    step, log_rows = 0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location="cpu")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step, log_rows = state["step"], state["log"]
        log.info("resuming fine-tuning at step %d of %d", step, total_steps)

    # The batch order is a pure function of (seed, epoch), so resuming at optimizer step
    # ``step`` replays exactly the micro-batches an uninterrupted run would see next.
    def micro_batches():
        epoch = 0
        while True:
            yield from make_batches(lengths, micro, random.Random(f"{seed}:{epoch}"))
            epoch += 1

    stream = micro_batches()
    for _ in range(step * accum):
        next(stream)

    model.train()
    start_time = time.time()
    tokens_seen = sum(r["tokens"] for r in log_rows)
    bar = tqdm(total=total_steps, initial=step, desc=f"finetune {task_name}", mininterval=5)
    while step < total_steps:
        for group in opt.param_groups:
            group["lr"] = lr * linear_lr(step, total_steps, warmup)
        batches = [collate([examples[i] for i in next(stream)], tokenizer.pad_token_id, device) for _ in range(accum)]
        n_target = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
        t0 = time.time()
        loss_sum = 0.0
        for b in batches:
            # Sum over completion tokens, divided by the tokens of the whole optimizer step,
            # so every completion token weighs the same whatever its micro-batch.
            with autocast:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = (
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(),
                    b["labels"][:, 1:].flatten(),
                    ignore_index=IGNORE,
                    reduction="sum",
                )
                / n_target
            )
            loss.backward()
            loss_sum += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        tokens_seen += n_tokens
        dt = time.time() - t0
        log_rows.append(
            {
                "step": step + 1,
                "loss": loss_sum,
                "lr": opt.param_groups[0]["lr"],
                "grad_norm": grad_norm,
                "tokens": n_tokens,
                "tokens_per_s": n_tokens / max(dt, 1e-9),
            }
        )
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", refresh=False)
        if step % cfg["save_every"] == 0 and step < total_steps:
            with io.atomic_path(state_path) as tmp:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "step": step,
                        "log": log_rows,
                    },
                    tmp,
                )
    bar.close()

    io.write_pretrained(out_dir / "model", model, tokenizer)
    io.write_parquet(out_dir / "train_log.parquet", pd.DataFrame(log_rows))
    wall = time.time() - start_time
    summary = {
        "checkpoint": str(checkpoint),
        "task": task_name,
        "lr": lr,
        "seed": seed,
        "examples": len(examples),
        "steps": total_steps,
        "total_tokens": tokens_seen,
        "wall_time_s": wall,
        "final_loss": log_rows[-1]["loss"] if log_rows else None,
        "config": cfg,
    }
    io.write_json(out_dir / "summary.json", summary)
    state_path.unlink(missing_ok=True)
    log.info(
        "fine-tuned %s on %s: %s",
        checkpoint,
        task_name,
        json.dumps({k: summary[k] for k in ("steps", "final_loss")}),
    )
    return summary
