"""Pre-train the PCFG checkpoint suite: a small GPT-2-architecture model on task samples drawn online.

Jain et al. (ICLR 2024) pre-train a minGPT-like model (6 blocks, 6 heads, d = 192, about 3M parameters) as a
language model of whole samples ``<sos> T O O′ <sot> text <eot> <art> answer <eos>`` whose task and operands
follow a prior (e.g. count with O = a 99.9 % of the time and O = b 0.1 %), with AdamW at 1e-3 and a cosine
schedule after 20 % warmup. Two runs share this module:

- ``pretrain``: the main run; checkpoints ``step<N>`` at :func:`ptft.checkpoints.suite.save_steps`;
- ``baseline``: the "scratch + FT" baseline, pre-trained on the fine-tuning task itself (the config's
  ``baseline`` block); one checkpoint, its final model, ``scratch``; seed + 1 so its init differs.

Like the toy suite (:mod:`ptft.checkpoints.toy_pretrain`), a run saves its full state at every checkpoint and
resumes from it after an interruption; the data generator's state is part of it, so a resumed run draws the
same batches as an uninterrupted one.

    ptft pretrain-pcfg --config '<json>' --run pretrain --seed 0 --out-dir results/pcfg/checkpoints ...
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from ptft import io
from ptft.checkpoints.suite import checkpoint_name, save_steps
from ptft.pcfg.tokenizer import build_tokenizer
from ptft.pcfg.world import TASKS, World, check_weights, sample_batch

log = logging.getLogger(__name__)

WHERE = "checkpoints.pcfg"
RUNS = ("pretrain", "baseline")
BASELINE_CHECKPOINT = "scratch"
_REQUIRED = ("model", "steps", "n_checkpoints", "first_step", "batch_size", "lr", "weight_decay")
# Training progress is logged this many times per run.
_LOGS = 10


# What pre-training predicts: every token of a sample (the grammar's text too), or the answer alone.
LOSSES = ("sample", "answer")


def run_block(cfg: Mapping, run: str) -> dict:
    """The data of a run: ``{tasks, prior, spurious}`` from the config's ``pretrain`` or ``baseline`` block."""
    if run not in RUNS:
        raise ValueError(f"run {run!r} is not one of {RUNS}")
    block = cfg.get(run)
    if block is None:
        raise ValueError(f"{WHERE}.{run}: the run's block is missing or null")
    unknown = set(block) - {"tasks", "prior", "spurious"}
    if unknown:
        raise ValueError(f"{WHERE}.{run}: unknown keys {sorted(unknown)}")
    spurious = block.get("spurious", 0.0) or 0.0
    if not isinstance(spurious, int | float) or isinstance(spurious, bool) or not 0 <= spurious <= 1:
        raise ValueError(f"{WHERE}.{run}.spurious: {spurious!r} is not a fraction in [0, 1]")
    tasks = check_weights(block.get("tasks"), list(TASKS), f"{WHERE}.{run}.tasks")
    prior = check_weights(block.get("prior"), ("a", "b", "c"), f"{WHERE}.{run}.prior")
    if spurious > 0:
        for name in tasks:
            if not TASKS[name].numeric:
                raise ValueError(f"{WHERE}.{run}.spurious: task {name} has no numeric answer to correlate")
    return {"tasks": tasks, "prior": prior, "spurious": float(spurious)}


def check_config(cfg: Mapping) -> None:
    for key in _REQUIRED:
        if key not in cfg:
            raise ValueError(f"{WHERE}.{key}: missing")
    for key in ("layers", "heads", "hidden_size"):
        if key not in cfg["model"]:
            raise ValueError(f"{WHERE}.model.{key}: missing")
    if cfg["model"]["hidden_size"] % cfg["model"]["heads"]:
        raise ValueError(
            f"{WHERE}.model.hidden_size: {cfg['model']['hidden_size']} is not a multiple of heads "
            f"{cfg['model']['heads']}"
        )
    if cfg["batch_size"] < 1 or cfg["steps"] < 1:
        raise ValueError(f"{WHERE}: steps ({cfg['steps']}) and batch_size ({cfg['batch_size']}) must be >= 1")


def build_model(cfg: Mapping, world: World, tokenizer) -> GPT2LMHeadModel:
    """GPT-2 as Jain et al.'s minGPT: no dropout, positions for exactly one sample."""
    m = cfg["model"]
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=world.sample_length,
        n_embd=m["hidden_size"],
        n_layer=m["layers"],
        n_head=m["heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``floor`` × the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def encode_samples(tokenizer, records: Sequence[Mapping], loss: str = "sample") -> dict[str, torch.Tensor]:
    """Whole samples (prompt, answer, ``<eos>``), padded right; labels on every real token (``loss`` sample:
    a language model of the sample) or on the answer and ``<eos>`` alone (``answer``), -100 elsewhere."""
    if loss not in LOSSES:
        raise ValueError(f"{WHERE}.loss: {loss!r} is not one of {', '.join(LOSSES)}")
    texts = [f"{r['prompt']} {r['answer']} {tokenizer.eos_token}" for r in records]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if loss == "answer":
        # Everything up to <art> is prompt: its tokens (the grammar's text among them) are not predicted.
        art = tokenizer.convert_tokens_to_ids("<art>")
        prompt = torch.cumsum(batch["input_ids"] == art, dim=1) == 0
        labels = labels.masked_fill(prompt | (batch["input_ids"] == art), -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def _answer_hits(logits: torch.Tensor, input_ids: torch.Tensor, art_id: int) -> torch.Tensor:
    """Whether the prediction after ``<art>`` (one per sample) is the answer that follows it."""
    at = (input_ids == art_id).int().argmax(dim=1)
    rows = torch.arange(len(input_ids), device=input_ids.device)
    return logits[rows, at].argmax(-1) == input_ids[rows, at + 1]


@torch.no_grad()
def answer_accuracy(model, tokenizer, records: Sequence[Mapping], batch_size: int = 256) -> float:
    """The fraction of records whose most likely token after the prompt (at ``<art>``) is the answer."""
    if not records:
        raise ValueError("answer_accuracy: no records")
    was_training = model.training
    model.eval()
    hits = 0
    try:
        for i in range(0, len(records), batch_size):
            chunk = records[i : i + batch_size]
            batch = tokenizer([r["prompt"] for r in chunk], add_special_tokens=False, padding=True, return_tensors="pt")
            device = next(model.parameters(), torch.empty(0)).device
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = mask.sum(dim=1) - 1
            predicted = logits[torch.arange(len(chunk), device=device), last].argmax(-1).cpu()
            answers = torch.tensor(tokenizer.convert_tokens_to_ids([r["answer"] for r in chunk]))
            hits += int((predicted == answers).sum())
    finally:
        model.train(was_training)
    return hits / len(records)


def _fingerprint(cfg: Mapping, run: str, seed: int) -> str:
    return json.dumps({"config": cfg, "run": run, "seed": seed}, sort_keys=True, default=str)


def pretrain(cfg: dict, run: str, out_dir: Path, state_dir: Path, seed: int) -> dict:
    """Run (or resume) one run; write its checkpoints to ``out_dir``; return its manifest."""
    check_config(cfg)
    data = run_block(cfg, run)
    world = World.from_config(cfg.get("world"), f"{WHERE}.world")
    grammar = world.build_grammar()
    out_dir, state_dir = Path(out_dir), Path(state_dir) / run
    state_dir.mkdir(parents=True, exist_ok=True)
    total = cfg["steps"]
    if run == "pretrain":
        steps = save_steps(total, cfg["n_checkpoints"], cfg["first_step"])
        names = {s: checkpoint_name(s) for s in steps}
    else:
        steps, names = [total], {total: BASELINE_CHECKPOINT}

    tokenizer: PreTrainedTokenizerFast = build_tokenizer(world)
    art_id = tokenizer.convert_tokens_to_ids("<art>")
    torch.manual_seed(seed if run == "pretrain" else seed + 1)
    rng = random.Random(f"pcfg-pretrain:{seed}:{run}")
    # A GPU where there is one (the paper-scale run is ~1e15 FLOPs); the data are drawn on the CPU either way.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(cfg, world, tokenizer).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=cfg["weight_decay"])
    start = 0
    state_path = state_dir / "state.pt"
    fingerprint = _fingerprint(cfg, run, seed)
    state = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        # A changed study setting (as for fine-tuning runs): the old run's state is no start for this one.
        log.warning("%s: saved by another config, run or seed; pre-training starts afresh", state_path)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        rng.setstate(state["data_rng"])
        start = state["step"]
        log.info("resuming pre-training (%s) at step %d", run, start)

    n_params = sum(p.numel() for p in model.parameters())
    warmup = max(1, int(cfg.get("warmup_ratio", 0.2) * total))
    floor = cfg.get("min_lr_ratio", 0.1)
    tokens_per_step = cfg["batch_size"] * world.sample_length
    log_every = max(1, round(total / _LOGS))
    save_every = max(1, total // 10)
    losses: list[float] = []
    hits = seen = 0
    model.train()
    bar = tqdm(range(start, total), desc=f"pretrain-pcfg {run}", initial=start, total=total, mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg["lr"], warmup, floor)
        records = sample_batch(world, grammar, rng, cfg["batch_size"], data["tasks"], data["prior"], data["spurious"])
        batch = {k: v.to(device) for k, v in encode_samples(tokenizer, records, cfg.get("loss", "sample")).items()}
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        with torch.no_grad():
            hit = _answer_hits(out.logits, batch["input_ids"], art_id)
        hits, seen = hits + int(hit.sum()), seen + len(hit)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        done = step + 1
        if done % log_every == 0 or done == total:
            log.info(
                "%s step %d/%d: loss %.4f, answer accuracy %.3f (means over the last %d steps), lr %.2e",
                run,
                done,
                total,
                sum(losses) / len(losses),
                hits / seen,
                len(losses),
                opt.param_groups[0]["lr"],
            )
            losses, hits, seen = [], 0, 0
        if done in names:
            io.write_pretrained(
                state_dir / "checkpoints" / names[done], model, tokenizer, {"pcfg_run": run, "step": done}
            )
        # The state at every checkpoint and every tenth of the run: an interrupted run loses at most that.
        if done in names or done % save_every == 0:
            with io.atomic_path(state_path) as tmp:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "data_rng": rng.getstate(),
                        "step": done,
                        "fingerprint": fingerprint,
                    },
                    tmp,
                )
            log.info("%s step %d: saved %s", run, done, names.get(done, "the state"))

    entries = []
    for s in steps:
        name = names[s]
        io.write_dir(
            out_dir / name,
            lambda tmp, n=name: shutil.copytree(state_dir / "checkpoints" / n, tmp, dirs_exist_ok=True),
        )
        entries.append({"name": name, "step": s, "tokens": s * tokens_per_step, "path": str(out_dir / name)})
    return {
        "suite": "pcfg",
        "architecture": "GPT2LMHeadModel",
        "parameters": n_params,
        "tokens_per_step": tokens_per_step,
        "checkpoints": entries,
    }
