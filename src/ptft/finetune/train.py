"""Supervised fine-tuning of one checkpoint on one task: one loop, read top to bottom.

    ptft finetune --checkpoint results/toy/checkpoints/step200 --train results/toy/data/train/toy_nli.parquet \
        --task toy_nli --method full --config '<json of the finetune section>' --lr 1e-3 --seed 0 \
        --out-dir results/toy/finetune/... --state-dir results/toy/.state/finetune/...

Loss on completion tokens only, summed over the completion tokens of an optimizer step and
divided by their number, so every token weighs the same whatever its micro-batch. AdamW,
linear warmup then linear decay, gradient clipping at ``max_grad_norm``. Micro-batches are
packed without padding (or length-grouped, see :mod:`ptft.finetune.batching`), and the LM head
runs only on the positions that have a target: for classification that is one or two tokens
per example instead of all of them, which is most of the head's cost with a 50k vocabulary.
Both shortcuts are checked against the plain ``model(...).logits`` loss on the first examples
before training; a model on which they differ falls back to the plain path, with a warning.

The method (:mod:`ptft.finetune.methods`) prepares the model; resumption and stop signals
are in :mod:`ptft.finetune.state`; probes in :mod:`ptft.finetune.probes`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ptft import io
from ptft.checkpoints.load import load_pretrained
from ptft.data.registry import get_dataset
from ptft.finetune import methods, probes, state
from ptft.finetune.batching import IGNORE, collate, collate_padded, encode_examples, make_batches
from ptft.finetune.grad_buffers import KeptGrads
from ptft.finetune.packed_attention import use_packed_attention

log = logging.getLogger(__name__)

# Dense bf16 peak of the accelerators a study is likely to run on, for the MFU estimate.
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "A6000": 155e12, "L40S": 362e12, "V100": 125e12}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def linear_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (from 0): linear warmup over ``warmup``
    steps, then linear decay to 0. Unlike ``transformers``' ``get_linear_schedule_with_warmup``,
    the first step already trains (at ``1 / warmup`` of the peak) instead of running at lr 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def warmup_steps(total: int, ratio: float) -> int:
    """Warmup steps of a run of ``total`` optimizer steps: ``ratio × total``, rounded, at least 1."""
    return max(1, round(ratio * total))


def count_steps(n_examples: int, cfg: dict) -> int:
    """Optimizer steps of a run: ``epochs`` over the examples, at most ``max_steps``."""
    steps = math.ceil(math.ceil(n_examples / cfg["batch_size"]) * cfg["epochs"] / cfg["grad_accum"])
    return min(steps, cfg.get("max_steps") or steps)


def completion_loss(model, batch: dict, fast: bool, kept: KeptGrads | None = None) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens (labels shifted by one).

    ``kept`` (fast path only): the embedding and head gradients go into kept buffers.
    """
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    # No KV cache: it is useless in training, and with one transformers ignores packed position_ids.
    inputs = {**{k: v for k, v in batch.items() if k != "labels"}, "use_cache": False}
    if fast:
        inner = methods.unwrap(model)
        kept = kept if kept is not None and kept.active else None
        if kept is not None:
            inputs["inputs_embeds"] = kept.embed(inputs.pop("input_ids"))
        hidden = inner.base_model(**inputs).last_hidden_state[:, :-1][keep]
        logits = kept.head(hidden) if kept is not None else inner.get_output_embeddings()(hidden)
    else:
        logits = model(**inputs).logits[:, :-1][keep]
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> float:
    """``clip_grad_norm_`` that skips the rescaling pass over every gradient when it would be
    a multiplication by 1 (the usual case after warmup); returns the norm before clipping."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    value = float(norm)
    if max_norm / (value + 1e-6) < 1:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return value


@torch.no_grad()
def check_shortcuts(model, examples, batching: str, pad_id: int, device, kept: KeptGrads | None = None):
    """(batching, fast head) that reproduce the plain padded ``model(...).logits`` loss.

    ``kept`` is switched off (``kept.active = False``) if its path does not reproduce it either.
    """
    was_training = model.training
    model.eval()
    sample = examples[:4]
    padded = collate_padded(sample, pad_id, device)
    ref = completion_loss(model, padded, fast=False)

    def same(loss):
        return bool(torch.isclose(loss, ref, rtol=1e-4, atol=1e-4))

    fast = same(completion_loss(model, padded, fast=True))
    if not fast:
        log.warning("this model's logits are not lm_head(hidden states); computing full logits (slower)")
    if batching == "packed" and not same(completion_loss(model, collate(sample, "packed", pad_id, device), fast)):
        log.warning("this model ignores position_ids when masking packed sequences; using grouped batches")
        batching = "grouped"
    if kept is not None and kept.active and not (fast and same(completion_loss(model, padded, True, kept))):
        log.warning("this model does not take inputs_embeds as its embedding's output; gradients not kept")
        kept.active = False
    model.train(was_training)
    return batching, fast


@torch.no_grad()
def validation_loss(model, examples, batching: str, pad_id: int, batch_size: int, fast: bool, device) -> float:
    """Mean cross-entropy per completion token of the validation examples."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], batching, pad_id, device)
        total += float(completion_loss(model, batch, fast))
        count += int((batch["labels"][:, 1:] != IGNORE).sum())
    model.train(was_training)
    return total / max(count, 1)


def validation_score(model, tokenizer, task, records: list[dict], fmt: str, seed: int) -> float:
    """The task's primary metric, zero-shot in the training format, with the evaluation defaults."""
    from ptft.evaluate.scoring import build_prompts, score_items

    cfg = {"batch_size": 16, "max_new_tokens": {"classification": 5, "generation": 60}, "stop": "\n",
           "rouge_stemmer": False}  # fmt: skip
    items = [{**r, "idx": i} for i, r in enumerate(records)]
    model.eval()
    result = score_items(model, tokenizer, task, items, build_prompts(task, items, [], fmt, 0, seed, task.name), cfg)[0]
    model.train()
    return float(np.mean(result["score"]))


def peak_flops(device: str, cfg: dict) -> float | None:
    """The device's peak FLOP/s for the MFU estimate: ``peak_tflops`` if set, else a known GPU's bf16 peak."""
    if cfg.get("peak_tflops"):
        return cfg["peak_tflops"] * 1e12
    if device == "cuda":
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return None


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def train_loop(model, examples: list[tuple[list[int], list[int]]], cfg: dict, *args, **kwargs) -> dict:
    """Train ``model`` in place on encoded examples; the run's record (``extra`` plus timings).

    Arguments as :func:`_train_loop`. Packed batches run with the example-by-example attention
    of :mod:`ptft.finetune.packed_attention` when the model uses SDPA.
    """
    packed = cfg["batching"] == "packed"
    with use_packed_attention(methods.unwrap(model)) if packed else contextlib.nullcontext():
        return _train_loop(model, examples, cfg, *args, **kwargs)


def _train_loop(
    model,
    examples: list[tuple[list[int], list[int]]],
    cfg: dict,
    lr: float,
    seed: int,
    pad_id: int,
    state_path: Path | None = None,
    extra: dict | None = None,
    on_step=None,
    desc: str = "finetune",
) -> dict:
    """``extra`` holds what is saved with the state and restored on resume (``log`` rows at least);
    ``on_step(step, extra)`` runs before the first step and after every step (probes).
    """
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16")
    # Timings exclude the on_step callbacks (probes), so tokens/s is the training's own.
    extra = {"log": [], "wall_time_s": 0.0, "callback_time_s": 0.0, **(extra or {})}
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel updates all parameters in one pass over memory; on CPU it is about 6x
    # faster than the default for-each one, which makes the optimizer step the bottleneck.
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg["weight_decay"], fused=device.type in ("cpu", "cuda"))
    # CUDA's caching allocator already reuses gradient memory; on CPU, see grad_buffers.
    kept = KeptGrads(model) if device.type == "cpu" else None
    batching, fast = check_shortcuts(model, examples, cfg["batching"], pad_id, device, kept)
    lengths = [len(ids) for ids, _ in examples]

    micro, accum = cfg["batch_size"], cfg["grad_accum"]
    total_steps = count_steps(len(examples), cfg)
    warmup = warmup_steps(total_steps, cfg["warmup_ratio"])

    step = 0
    if state_path is not None and state_path.exists():
        saved = state.load(state_path, model, opt)
        step = saved["step"]
        extra = {k: saved[k] for k in extra}
        log.info("resuming at step %d of %d from %s", step, total_steps, state_path)

    # The batch order is a pure function of (seed, epoch), so resuming at optimizer step
    # ``step`` replays exactly the micro-batches an uninterrupted run would see next.
    def micro_batches():
        epoch = 0
        while True:
            yield from make_batches(lengths, micro, random.Random(f"{seed}:{epoch}"), batching == "grouped")
            epoch += 1

    stream = micro_batches()
    for _ in range(step * accum):
        next(stream)

    def callback(at_step: int) -> None:
        if on_step:
            t = time.time()
            on_step(at_step, extra)
            extra["callback_time_s"] += time.time() - t

    if step == 0:
        callback(0)
    stop = state.StopRequested()
    model.train()
    start = time.time() - extra["wall_time_s"] - extra["callback_time_s"]
    bar = tqdm(total=total_steps, initial=step, desc=desc, mininterval=5)
    while step < total_steps:
        for group in opt.param_groups:
            group["lr"] = lr * linear_lr(step, total_steps, warmup)
        batches = [collate([examples[i] for i in next(stream)], batching, pad_id, device) for _ in range(accum)]
        n_target = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        t0 = time.time()
        loss_sum = 0.0
        for b in batches:
            with autocast:
                loss = completion_loss(model, b, fast, kept) / n_target
            loss.backward()
            loss_sum += loss.item()
        if kept is not None:
            kept.settle()
        grad_norm = clip_gradients(trainable, cfg["max_grad_norm"])
        opt.step()
        if kept is not None:
            kept.zero_grad(opt)
        else:
            opt.zero_grad(set_to_none=True)
        n_tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                       for b in batches)  # fmt: skip
        step += 1
        extra["log"].append({"step": step, "loss": loss_sum, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                             "tokens": n_tokens, "tokens_per_s": n_tokens / max(time.time() - t0, 1e-9)})  # fmt: skip
        callback(step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", refresh=False)
        extra["wall_time_s"] = time.time() - start - extra["callback_time_s"]
        if state_path is not None and (stop or (step % cfg["save_every"] == 0 and step < total_steps)):
            state.save(state_path, model, opt, step, extra)
        if stop:
            bar.close()
            raise SystemExit(128 + stop.signum)
    bar.close()
    stop.restore()
    tokens = sum(r["tokens"] for r in extra["log"])
    return {**extra, "steps": total_steps, "batching": batching, "head_on_targets_only": fast, "total_tokens": tokens}


def finetune(
    checkpoint: str | Path,
    train_path: str | Path,
    task_name: str,
    cfg: dict,
    lr: float,
    seed: int,
    out_dir: str | Path,
    state_dir: str | Path,
    method: str = "full",
    validation_path: str | Path | None = None,
) -> dict:
    """Fine-tune and write ``model/``, ``train_log.parquet``, ``probes.parquet`` and ``summary.json``."""
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    task = get_dataset(task_name).task
    set_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # fp32 master weights; bf16 runs autocast the forward pass (mixed precision, as the paper's bf16).
    model, tokenizer = load_pretrained(checkpoint, dtype=torch.float32, device=device)
    records = pd.read_parquet(train_path).to_dict("records")
    fmt = cfg["format"]
    examples = encode_examples(tokenizer, task, records, fmt, cfg["max_length"])
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()

    state_path = state_dir / "state.pt"
    extra = {"probes": [], "lp": {}}
    if method == "lpft":
        if state_path.exists():  # the fitted head is in the saved state
            methods.untie_head(methods.unwrap(model))
        else:
            extra["lp"] = methods.fit_linear_head(model, tokenizer, task, records, fmt, cfg["lpft"], device)
    if method == "lora":
        model = methods.apply_lora(model, cfg["lora"])
        if cfg["gradient_checkpointing"]:
            model.enable_input_require_grads()

    on_step = None
    probe_cfg = cfg.get("probes")
    if probe_cfg:
        probe_set = (
            probes.read_probe_set(probe_cfg["path"])
            if probe_cfg.get("path")
            else probes.builtin_probe_set(task, records, fmt, probe_cfg["examples"], seed)
        )
        encoded_probes = probes.encode_probes(tokenizer, probe_set)

        def on_step(step: int, extra: dict) -> None:
            if step % probe_cfg["every"] and step != total_steps:
                return
            inner = methods.unwrap(model)
            model.eval()
            logps = probes.response_logps(inner.base_model, inner.get_output_embeddings(), encoded_probes, 64, device)
            model.train()
            extra["probes"] += probes.probe_rows(step, probe_set, logps)

    total_steps = count_steps(len(examples), cfg)
    run = train_loop(model, examples, cfg, lr, seed, tokenizer.pad_token_id, state_path, extra, on_step,
                     desc=f"finetune {task_name} ({method})")  # fmt: skip
    pad_id, batching, fast = tokenizer.pad_token_id, run["batching"], run["head_on_targets_only"]
    wall, micro = run["wall_time_s"], cfg["batch_size"]

    valid = {}
    if validation_path is not None:
        val_records = pd.read_parquet(validation_path).to_dict("records")
        val_examples = encode_examples(tokenizer, task, val_records, fmt, cfg["max_length"])
        valid["loss"] = validation_loss(model, val_examples, batching, pad_id, micro, fast, device)
        if cfg.get("validation_score"):
            valid["score"] = validation_score(model, tokenizer, task, val_records, fmt, seed)
        log.info("validation: %s", valid)

    tokens, n_params = run["total_tokens"], sum(p.numel() for p in model.parameters())
    flops = peak_flops(device, cfg)
    summary = {
        "checkpoint": str(checkpoint),
        "task": task_name,
        "method": method,
        "lr": lr,
        "seed": seed,
        "model_dir": str(out_dir / "model"),
        "examples": len(examples),
        "steps": run["steps"],
        "batching": batching,
        "head_on_targets_only": fast,
        "total_tokens": tokens,
        "wall_time_s": wall,
        "tokens_per_s": tokens / max(wall, 1e-9),
        "probe_time_s": run["callback_time_s"],
        "n_parameters": n_params,
        "n_trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_flops": flops,
        # 6·N·D: forward and backward FLOPs of a dense transformer per token, over the peak.
        "mfu": 6 * n_params * tokens / wall / flops if flops else None,
        "peak_memory_bytes": peak_memory_bytes(device),
        "final_loss": run["log"][-1]["loss"] if run["log"] else None,
        "validation": valid,
        **run["lp"],
        "config": cfg,
    }
    methods.save_finetuned(out_dir / "model", model, tokenizer, method, cfg.get("lora"), checkpoint)
    io.write_parquet(out_dir / "train_log.parquet", pd.DataFrame(run["log"]))
    io.write_parquet(out_dir / "probes.parquet", pd.DataFrame(run["probes"], columns=list(probes.PROBE_COLUMNS)))
    io.write_json(out_dir / "summary.json", summary)
    state_path.unlink(missing_ok=True)
    log.info("fine-tuned %s on %s (%s): %d steps, final loss %s, %.0f tokens/s",
             checkpoint, task_name, method, run["steps"], summary["final_loss"], summary["tokens_per_s"])  # fmt: skip
    return summary
