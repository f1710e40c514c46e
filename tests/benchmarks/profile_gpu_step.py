"""Where an optimizer step of the GPU benchmark goes: torch.profiler over a few steps (not run in CI).

    python tests/benchmarks/profile_gpu_step.py --size olmo-1b --profile mnli --steps 6
    python tests/benchmarks/profile_gpu_step.py --profile mnli --steps 20 --no-trainer --finetune-compile

Runs ours and ``transformers.Trainer`` (as ``bench_gpu`` runs them) under ``torch.profiler`` and
prints the operators that take the most CPU and GPU time, then a bare loop (padded batch,
``model(...).loss``, fused AdamW) timed step by step as the floor of what a plain loop costs.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_finetune import BATCH, PAD, run_hf_trainer, run_ours, synchronize
from bench_gpu import PROFILES, SIZES, build_model, prepared
from torch.profiler import ProfilerActivity, profile

from ptft.finetune.batching import collate_padded


def show(prof, title: str, rows: int) -> None:
    print(f"\n=== {title}: by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))
    print(f"\n=== {title}: by self device time")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=60))


def bare_loop(model, examples, steps: int, device: str) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    times = []
    for s in range(steps):
        batch = collate_padded(examples[s * BATCH : (s + 1) * BATCH], PAD, device)
        synchronize()
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", choices=sorted(SIZES), default="olmo-1b")
    p.add_argument("--profile", choices=sorted(PROFILES), default="mnli")
    p.add_argument("--method", choices=["full", "lora"], default="full")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--trainer", action=argparse.BooleanOptionalAction, default=True,
                   help="profile transformers.Trainer too (--no-trainer: ours only, in Trainer's order)")  # fmt: skip
    p.add_argument("--finetune-compile", action="store_true",
                   help="ours with finetune.compile: auto (compiled blocks and AdamW step)")  # fmt: skip
    p.add_argument("--cuda-graphs", action="store_true",
                   help="ours with finetune.cuda_graphs: auto (the profile shows replays, not kernels)")  # fmt: skip
    p.add_argument("--trace", help="also write ours' profile as a Chrome trace to this path (.json.gz)")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab = SIZES[a.size]["vocab_size"]
    base = build_model(a.size, 0)
    examples = PROFILES[a.profile](a.steps * BATCH, vocab, 0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    precision = "bf16" if device == "cuda" else "fp32"

    extra = {"compile": "auto" if a.finetune_compile else False, "cuda_graphs": "auto" if a.cuda_graphs else False}
    model = prepared(base, a.method, device, 0)
    _, batches = run_hf_trainer(model, examples, a.steps, 1e-6, 0, vocab, device == "cuda")  # warm-up, and the order
    model = prepared(base, a.method, device, 0)
    run_ours(model, examples, a.steps, 1e-6, 0, batches, precision, extra)  # warm-up (compiles, captures)
    del model

    if a.trainer:
        model = prepared(base, a.method, device, 0)
        with profile(activities=activities) as prof:
            s = run_hf_trainer(model, examples, a.steps, 1e-6, 0, vocab, device == "cuda")[0]
        show(prof, f"Trainer, {a.steps} steps in {s:.2f} s", a.rows)
    model = prepared(base, a.method, device, 0)
    with profile(activities=activities) as prof:
        s = run_ours(model, examples, a.steps, 1e-6, 0, batches, precision, extra)
    show(prof, f"ours ({', '.join(k for k, v in extra.items() if v) or 'eager'}), {a.steps} steps in {s:.2f} s", a.rows)
    if a.trace:
        prof.export_chrome_trace(a.trace)
    if a.method == "full":
        model = prepared(base, a.method, device, 0)
        times = bare_loop(model, examples, a.steps, device)
        print(f"\nbare loop, seconds per step: {' '.join(f'{t:.3f}' for t in times)}")


if __name__ == "__main__":
    main()
