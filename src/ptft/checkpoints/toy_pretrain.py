"""Pre-train the toy checkpoint suite: a small LLaMA-architecture model on the toy corpus.

This is what OLMo's and Pythia's released checkpoints are to real studies: a series of
``save_pretrained`` folders of one run at increasing steps, with a manifest of their steps
and tokens seen. The run resumes from its last saved checkpoint after an interruption.

    ptft pretrain-toy --config '<json>' --data-dirs results/toy/raw/* --out-dir results/toy/checkpoints
"""

from __future__ import annotations

import logging
import math
import random
import shutil
from itertools import chain, islice
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ptft import io
from ptft.checkpoints.suite import checkpoint_name, save_steps
from ptft.checkpoints.tokenizer import train_tokenizer
from ptft.toy.corpus import documents, tokenizer_extra_texts
from ptft.toy.generate import held_out_keys

log = logging.getLogger(__name__)


def token_blocks(docs, tokenizer, n_blocks: int, seq_len: int) -> torch.Tensor:
    """Concatenate documents, each followed by EOS, and cut the stream into ``n_blocks`` blocks."""
    need = n_blocks * seq_len
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    while len(stream) < need:
        batch = list(islice(docs, 1024))
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    return torch.tensor(stream[:need], dtype=torch.long).view(n_blocks, seq_len)


def build_model(cfg: dict, tokenizer) -> LlamaForCausalLM:
    m = cfg["model"]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["layers"],
        num_attention_heads=m["heads"],
        num_key_value_heads=m["heads"],
        max_position_embeddings=m["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(cfg: dict, dataset_dirs, out_dir: Path, state_dir: Path, seed: int) -> dict:
    """Run (or resume) pre-training; write the checkpoints and the manifest; return the manifest."""
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    steps = save_steps(cfg["steps"], cfg["n_checkpoints"], cfg["first_step"])
    torch.manual_seed(seed)
    random.seed(seed)

    tok_dir = state_dir / "tokenizer"
    exclude = held_out_keys(dataset_dirs)
    docs = documents(cfg["corpus_mix"], seed, exclude)
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        tokenizer = train_tokenizer(
            chain(islice(docs, cfg["tokenizer_docs"]), tokenizer_extra_texts()), cfg["vocab_size"]
        )
        io.write_dir(tok_dir, tokenizer.save_pretrained)
    blocks = token_blocks(docs, tokenizer, cfg["steps"] * cfg["batch_size"], cfg["seq_len"])

    model = build_model(cfg, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=cfg["weight_decay"])
    start = 0
    state_path = state_dir / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        log.info("resuming pre-training at step %d", start)

    n_params = sum(p.numel() for p in model.parameters())
    warmup = max(1, int(cfg["warmup_ratio"] * cfg["steps"]))
    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
    model.train()
    bar = tqdm(range(start, cfg["steps"]), desc="pretrain", initial=start, total=cfg["steps"], mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg["steps"], cfg["lr"], warmup)
        x = blocks[step * cfg["batch_size"] : (step + 1) * cfg["batch_size"]]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        done = step + 1
        if done in steps:
            io.write_pretrained(state_dir / "checkpoints" / checkpoint_name(done), model, tokenizer)
            with io.atomic_path(state_path) as tmp:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "step": done,
                    },
                    tmp,
                )
            log.info("step %d loss %.4f: saved %s", done, loss.item(), checkpoint_name(done))

    entries = []
    for s in steps:
        name = checkpoint_name(s)
        io.write_dir(
            out_dir / name,
            lambda tmp, n=name: shutil.copytree(state_dir / "checkpoints" / n, tmp, dirs_exist_ok=True),
        )
        entries.append({"name": name, "step": s, "tokens": s * tokens_per_step, "path": str(out_dir / name)})
    manifest = {
        "suite": "toy",
        "architecture": "LlamaForCausalLM",
        "parameters": n_params,
        "tokens_per_step": tokens_per_step,
        "checkpoints": entries,
    }
    return manifest
