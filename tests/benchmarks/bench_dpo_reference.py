"""DPO's two reference modes side by side in one process (not run in CI):

    .venv/bin/python tests/benchmarks/bench_dpo_reference.py --out dpo_reference.json
    .venv/bin/python tests/benchmarks/bench_dpo_reference.py --device cuda --layers 24 --hidden 1024 --heads 16

``cached`` computes each pair's reference log-probabilities once, before training (one forward
pass per pair in all, kept with the pair); ``frozen`` scores every micro-batch again with a frozen
copy of the starting model (one extra forward per pair per epoch, and the copy's memory). Both train
the same random-init LLaMA (``--layers``, ``--hidden``, ``--heads``; the toy model's shape by default)
on the same toy preference pairs (``ptft.toy.preference``), with the same optimizer steps; the two
alternate ``--repeat`` times and the best time of each is reported, with the ratio and the largest
difference of their loss curves (which must be float noise).
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
from report import emit
from transformers import LlamaConfig, LlamaForCausalLM

from ptft.checkpoints.tokenizer import train_tokenizer
from ptft.data.registry import get_dataset
from ptft.finetune.methods import get_method
from ptft.finetune.methods.base import RunInputs
from ptft.finetune.train import train_loop
from ptft.toy.corpus import tokenizer_extra_texts
from ptft.toy.preference import preference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = random.Random(0)
    records = [preference(rng, "home") for _ in range(a.pairs)]
    texts = [r["prompt"] + " " + r["chosen"] + " " + r["rejected"] for r in records] + tokenizer_extra_texts()
    tok = train_tokenizer(iter(texts), 1024)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                         max_position_embeddings=512, pad_token_id=tok.pad_token_id)  # fmt: skip
    start = LlamaForCausalLM(config).to(a.device)
    dpo = get_method("dpo")
    base = {"format": "default", "max_length": 256, "max_prompt_length": 64, "batch_size": a.batch_size,
            "grad_accum": 1, "epochs": a.epochs, "max_steps": None, "warmup_ratio": 0.1, "weight_decay": 0.0,
            "precision": "fp32", "batching": "grouped", "max_grad_norm": 10.0, "save_every": 10**9,
            "optimizer": "rmsprop", "schedule": "constant"}  # fmt: skip
    best, losses = {}, {}
    for _ in range(a.repeat):
        for mode in ("cached", "frozen"):
            model = copy.deepcopy(start)
            cfg = {**base, "dpo": dpo.parse_config({"reference": mode, "beta": 0.1}, "finetune.dpo")}
            pairs = dpo.encode(tok, get_dataset("toy_pref"), records, cfg)
            if a.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model, _ = dpo.prepare(model, RunInputs(tok, None, records, cfg, a.device, False, pairs, []))
            result = train_loop(model, pairs, cfg, 1e-5, 0, tok.pad_token_id, loss_fn=dpo.loss, desc=f"dpo {mode}")
            if a.device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t
            best[mode] = min(best.get(mode, float("inf")), elapsed)
            losses[mode] = [r["loss"] for r in result.progress.log]
    out = {
        "pairs": a.pairs, "epochs": a.epochs, "steps": len(losses["cached"]), "device": a.device,
        "model": {"layers": a.layers, "hidden": a.hidden, "heads": a.heads,
                  "parameters": sum(p.numel() for p in start.parameters())},
        "seconds": best, "frozen_over_cached": best["frozen"] / best["cached"],
        "max_loss_difference": max(abs(x - y) for x, y in zip(losses["cached"], losses["frozen"], strict=True)),
    }  # fmt: skip
    emit(out, a.out)


if __name__ == "__main__":
    main()
