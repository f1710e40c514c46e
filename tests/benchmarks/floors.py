"""What the GPU at hand can do at best, for the paths ``bench_gpu.py`` times (not run in CI).

    python tests/benchmarks/floors.py --out floors.json                 # on the GPU
    .venv/bin/python tests/benchmarks/floors.py --size tiny --repeat 2  # CPU smoke run

Each figure is measured on the machine, the same day as the benchmark it bounds, so that
``docs/performance.md`` can report a path as a fraction of its floor instead of a datasheet's:

- **matmul peak**: the best of dense bf16 GEMMs (square 8192, and the model's own projection
  shapes at 4,096 tokens), TFLOP/s; fine-tuning's MFU is taken against it;
- **memory bandwidth**: copying a 4 GiB buffer (bytes read plus written over time), TB/s;
- **optimizer step**: fused AdamW over the model's parameters in fp32 with gradients (what a
  full fine-tuning step pays after its backward), against its bytes over the bandwidth;
- **forward+backward** of one short row (the ``mnli`` profile's 480 tokens a step, as one row)
  under bf16 autocast, eager and compiled, against 6·N·tokens over the matmul peak;
- **prefill**: one bf16 forward of a batch of prompts (TokenProb's 4-shot MNLI-like length and
  generation's 4-shot XSum-like length at the window), only the last position projected to the
  vocabulary, compiled; against 2·N·tokens (plus attention) over the matmul peak; with the
  attention evaluation runs (:mod:`ptft.evaluate.causal_attention`) and, for comparison, stock SDPA;
- **decode step**: one bf16 token for every row of a batch against a static KV cache at the
  window's length, compiled into a CUDA graph; against the weights' and the cache's bytes over
  the bandwidth.

Each is timed as the median of ``--repeat`` runs after a warm-up. The results go to ``--out``
as JSON with the command line.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys

import torch
from bench_gpu import SIZES, build_model, timed
from report import emit

from ptft.evaluate import causal_attention

DTYPE = torch.bfloat16


def median_seconds(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(repeat))


def matmul_peak(device: str, shapes: list[tuple[int, int, int]], repeat: int) -> dict:
    out = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=DTYPE)
        b = torch.randn(k, n, device=device, dtype=DTYPE)
        s = median_seconds(lambda a=a, b=b: a @ b, repeat)
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / s / 1e12
    return {"tflops_by_shape": out, "peak_tflops": max(out.values())}


def bandwidth(device: str, gib: float, repeat: int) -> float:
    n = int(gib * 2**30) // 4
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    s = median_seconds(lambda: dst.copy_(src), repeat)
    return 2 * n * 4 / s / 1e12


def adamw_step(model, repeat: int, tb_per_s: float) -> dict:
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    fused = params[0].is_cuda
    opt = torch.optim.AdamW(params, lr=1e-6, fused=fused, foreach=not fused)
    s = median_seconds(opt.step, repeat)
    n = sum(p.numel() for p in params)
    # Reads parameter, gradient and both moments; writes parameter and both moments: 7 fp32 values.
    floor = 7 * 4 * n / (tb_per_s * 1e12)
    for p in params:
        p.grad = None
    del opt
    return {"ms": 1e3 * s, "bandwidth_floor_ms": 1e3 * floor, "fraction_of_floor": floor / s}


def forward_backward(model, tokens: int, vocab: int, repeat: int, peak_tflops: float, compiled: bool) -> dict:
    device = next(model.parameters()).device
    ids = torch.randint(10, vocab, (1, tokens), device=device)
    step = torch.compile(model) if compiled else model

    def run():
        with torch.autocast(device.type, dtype=DTYPE, enabled=device.type == "cuda"):
            loss = step(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    s = median_seconds(run, repeat, warmup=3)
    floor = 6 * parameters(model) * tokens / (peak_tflops * 1e12)
    return {"tokens": tokens, "ms": 1e3 * s, "arithmetic_floor_ms": 1e3 * floor, "fraction_of_floor": floor / s}


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prefill(model, batch: int, length: int, vocab: int, repeat: int, peak_tflops: float) -> dict:
    """Timed with the attention evaluation uses (:mod:`ptft.evaluate.causal_attention`) and with
    stock SDPA, which on some transformers builds a causal mask while compiled."""
    device = next(model.parameters()).device
    ids = torch.randint(10, vocab, (batch, length), device=device)
    ms = {}
    for attention in ("sdpa", causal_attention.NAME):
        model.set_attn_implementation(attention)
        torch._dynamo.reset()
        forward = torch.compile(model, dynamic=False)
        run = lambda f=forward: f(input_ids=ids, use_cache=False, logits_to_keep=1)  # noqa: E731
        ms[attention] = 1e3 * median_seconds(run, repeat)
    s = ms[causal_attention.NAME] / 1e3
    cfg = model.config
    # Matmuls of the layers (2 FLOPs a weight a token; the embedding is a lookup) plus causal attention
    # (QK^T and AV: 2 · 2 · length² / 2 · hidden a layer a row), and the last position's projection.
    body = parameters(model) - cfg.vocab_size * cfg.hidden_size
    flops = 2 * body * batch * length + 2 * cfg.num_hidden_layers * cfg.hidden_size * length**2 * batch
    flops += 2 * cfg.vocab_size * cfg.hidden_size * batch
    floor = flops / (peak_tflops * 1e12)
    return {"batch": batch, "length": length, "ms": 1e3 * s, "items_per_s": batch / s, "ms_by_attention": ms,
            "arithmetic_floor_ms": 1e3 * floor, "fraction_of_floor": floor / s}  # fmt: skip


def decode_step(model, batch: int, cache_length: int, vocab: int, repeat: int, tb_per_s: float) -> dict:
    from transformers import StaticCache

    device = next(model.parameters()).device
    cfg = model.config
    cache = StaticCache(config=cfg, max_cache_len=cache_length)
    # The cache is full but for the timed steps' slots: each step reads about every key and value,
    # as the last new tokens of prompts at the window do. Every step writes the next slot (a
    # static cache counts its own length since transformers 5.2x).
    warmup = 3
    prompt = torch.randint(10, vocab, (batch, cache_length - warmup - repeat), device=device)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    ids = torch.randint(10, vocab, (batch, 1), device=device)
    position = torch.tensor([prompt.shape[1]], device=device)
    mode = "reduce-overhead" if device.type == "cuda" else None
    step = torch.compile(model, mode=mode, fullgraph=False)

    def run():
        step(input_ids=ids, past_key_values=cache, cache_position=position, use_cache=True)
        position.add_(1)

    s = median_seconds(run, repeat, warmup=warmup)
    weights = 2 * parameters(model)  # bf16
    heads = cfg.num_attention_heads
    kv_width = (getattr(cfg, "num_key_value_heads", None) or heads) * (cfg.hidden_size // heads)
    kv = 2 * cfg.num_hidden_layers * batch * cache_length * kv_width * 2
    floor = (weights + kv) / (tb_per_s * 1e12)
    return {"batch": batch, "cache_length": cache_length, "ms": 1e3 * s, "kv_cache_gib": kv / 2**30,
            "bandwidth_floor_ms": 1e3 * floor, "fraction_of_floor": floor / s}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="olmo-1b")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--batch", type=int, default=64, help="rows of a prefill and of a decode step")
    p.add_argument("--short-prompt", type=int, default=300, help="TokenProb's 4-shot MNLI-like prompt")
    p.add_argument("--train-tokens", type=int, default=480, help="the mnli profile's tokens a step")
    p.add_argument("--copy-gib", type=float, default=4.0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    window = SIZES[a.size]["max_position_embeddings"] if device == "cuda" else 256
    hidden, inter = SIZES[a.size]["hidden_size"], SIZES[a.size]["intermediate_size"]
    vocab = SIZES[a.size]["vocab_size"]
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    result = {"command": " ".join(["python", *sys.argv]), "size": a.size, "torch": torch.__version__, "device": name}
    big = 8192 if device == "cuda" else 256
    shapes = [(big, big, big), (4096, hidden, inter), (4096, inter, hidden), (4096, hidden, 3 * hidden)]
    result["matmul"] = matmul_peak(device, shapes, a.repeat)
    peak = result["matmul"]["peak_tflops"]
    result["bandwidth_tb_per_s"] = tb = bandwidth(device, a.copy_gib if device == "cuda" else 0.05, a.repeat)
    print(f"matmul peak {peak:.0f} TFLOP/s, copy bandwidth {tb:.2f} TB/s", flush=True)

    model = build_model(a.size, 0).to(device)
    result["parameters"] = parameters(model)
    result["adamw"] = adamw_step(model, a.repeat, tb)
    result["forward_backward"] = {
        mode: forward_backward(model, a.train_tokens, vocab, a.repeat, peak, mode == "compiled")
        for mode in ("eager", "compiled")
    }
    print("adamw", result["adamw"], "\nforward+backward", result["forward_backward"], flush=True)
    torch._dynamo.reset()

    model = model.to(DTYPE).eval()
    with torch.no_grad():
        result["prefill"] = [prefill(model, a.batch, n, vocab, a.repeat, peak) for n in (a.short_prompt, window - 60)]
        torch._dynamo.reset()
        result["decode_step"] = decode_step(model, a.batch, window, vocab, a.repeat, tb)
    print("prefill", result["prefill"], "\ndecode", result["decode_step"], flush=True)
    emit(result, a.out)


if __name__ == "__main__":
    main()
