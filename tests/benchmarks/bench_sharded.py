"""Sharded full fine-tuning (ptft.finetune.sharded) on N GPUs against one: tokens/s and memory per GPU.

    # one GPU, the largest OLMo-7B-shaped model that fits (layers cut until it does):
    python tests/benchmarks/bench_sharded.py --size olmo-7b --layers 20 --out one.json
    # the whole OLMo-7B architecture, sharded over two GPUs of one node:
    torchrun --standalone --nproc-per-node 2 tests/benchmarks/bench_sharded.py --size olmo-7b --out two.json

Random init, bf16 autocast over fp32 master weights (the study files' precision: bf16), AdamW,
packed XSum-like examples (bench_gpu.xsum_like), ``batch_size`` examples a micro-batch per GPU: the
N-process run's micro-batch holds N times as many, as ptft splits each micro-batch over the
processes. The model is built on the meta device, sharded, then materialised shard by shard, so no
process ever holds the whole 7B model. The loop is ptft's own (:func:`ptft.finetune.train.train_loop`).

Reports the median tokens/s (all processes together) and tokens/s per GPU over the steps after
``--warmup``, the model FLOP/s per GPU and its fraction of the bf16 peak, and each process's peak
memory. ``--size tiny`` runs on a CPU (gloo) as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from bench_finetune import EOS, PAD  # noqa: E402
from bench_gpu import SIZES, xsum_like  # noqa: E402

from ptft.finetune import sharded  # noqa: E402
from ptft.finetune.train import peak_flops, train_loop  # noqa: E402


def materialised(size: str, layers: int | None, device: str, w: sharded.World, seed: int):
    """The model built on the meta device, sharded when there are several processes, then given memory on
    ``device`` and random weights (N(0, 0.02), as OLMo's init) shard by shard."""
    from transformers import OlmoConfig, OlmoForCausalLM

    shape = {**SIZES[size], **({"num_hidden_layers": layers} if layers else {})}
    config = OlmoConfig(**shape, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)
    with torch.device("meta"):
        model = OlmoForCausalLM(config)
    if w.sharded:
        sharded.shard(model, "bf16")
    model.to_empty(device=device)
    torch.manual_seed(seed + w.rank)
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if "norm" in name:
                local.fill_(1.0)
            else:
                local.normal_(0.0, 0.02)
        # Buffers are computed in __init__; on the meta device they were not: the rotary frequencies again.
        rotary = model.model.rotary_emb
        for name, buffer in type(rotary)(rotary.config).named_buffers():
            getattr(rotary, name).copy_(buffer)
    return model, sum(p.numel() for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="olmo-7b", help="bench_gpu.SIZES")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default: the architecture's)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the median (allocator, kernels)")
    p.add_argument("--batch-size", type=int, default=4, help="examples a micro-batch per GPU")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    w = sharded.world()
    device = sharded.start(w) if w.sharded else "cuda" if torch.cuda.is_available() else "cpu"
    model, n_params = materialised(a.size, a.layers, device, w, a.seed)
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    vocab = SIZES[a.size]["vocab_size"]
    batch = a.batch_size * w.size
    examples = xsum_like(a.steps * batch, vocab, a.seed, max_length=2048)
    cfg = {"epochs": 1, "batch_size": batch, "grad_accum": 1, "warmup_ratio": 0.0, "warmup_steps": 1,
           "weight_decay": 0.0, "max_length": 2048, "max_steps": a.steps, "precision": "bf16" if device != "cpu"
           else "fp32", "batching": "packed", "max_grad_norm": 1.0, "save_every": 10**9}  # fmt: skip
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    result = train_loop(model, examples, cfg, 1e-5, a.seed, PAD, desc=f"{a.size} on {w.size} process(es)")
    wall = time.time() - t
    rates = [r["tokens_per_s"] for r in result.progress.log][a.warmup :]
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    memories = [memory]
    if w.sharded:
        memories = [None] * w.size
        dist.all_gather_object(memories, memory)
    if w.main:
        tokens_per_s = float(np.median(rates))
        peak = peak_flops("cuda" if device.startswith("cuda") else "cpu", {})
        flops_per_gpu = 6 * n_params * tokens_per_s / w.size
        out = {
            "command": " ".join(sys.argv), "size": a.size, "layers": a.layers or SIZES[a.size]["num_hidden_layers"],
            "n_parameters": n_params, "processes": w.size, "batch_size_per_gpu": a.batch_size,
            "gradient_checkpointing": a.gradient_checkpointing, "steps": a.steps, "warmup_steps_left_out": a.warmup,
            "tokens_per_s": tokens_per_s, "tokens_per_s_per_gpu": tokens_per_s / w.size,
            "model_tflops_per_s_per_gpu": flops_per_gpu / 1e12, "mfu": flops_per_gpu / peak if peak else None,
            "peak_memory_gib_per_process": memories, "wall_s": wall, "final_loss": result.progress.log[-1]["loss"],
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
            "torch": torch.__version__,
        }  # fmt: skip
        print(json.dumps(out, indent=2))
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(out, indent=2) + "\n")
    sharded.finish()


if __name__ == "__main__":
    main()
