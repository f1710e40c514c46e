"""The compiled AdamW step (``ptft.finetune.compiled.AdamWStep``) alone, on a model's parameters: ms a step
of each variant, side by side on the GPU at hand, against a copy of the same bytes (not run in CI).

    python tests/benchmarks/bench_adamw_step.py --size olmo-1b --out adamw.json

Variants: the step as ptft runs it (foreach ops) with bf16 copies of the matmul weights
(:mod:`ptft.finetune.bf16_weights`) or fp32 gradients, zeroing the gradients (as under CUDA
graphs) or not; the same arithmetic written per tensor (``compiled._adamw_per_tensor``), which
inductor compiles to one kernel a tensor; and ``torch.optim.AdamW(fused=True)`` on fp32 gradients. The
per-tensor variant's first update is checked bit for bit against the foreach one.

Measured on an H100 (OLMo-1B, 1.18 B parameters, 2026-12-06, code 44611ae), ms: bf16 copies zeroed
15.61, not zeroed 14.49, zeroed per tensor 12.63; fp32 gradients zeroed 12.87, not zeroed 11.15;
torch's fused AdamW 12.62; a 4.7 GB copy ran at 3.03 TB/s. The fp32 steps run at about that
bandwidth (32 and 28 bytes a parameter); the copies' foreach step moves 30 bytes a parameter but ran
at 2.3 TB/s: in the profile, inductor writes the copies and zeroes their gradients in a kernel of
their own per tensor, after the foreach kernels. Written per tensor (ptft's step since), it ran at
2.8 TB/s. Raw: ``tests/benchmarks/measured/adamw_step_h100_olmo1b.json``.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_gpu import SIZES, build_model
from report import emit

from ptft.finetune import compiled
from ptft.finetune.bf16_weights import Bf16Weights


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_ms(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize()
    return (time.perf_counter() - t) / repeat * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="olmo-1b")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(a.size, 0).to(device)
    params = list(model.parameters())
    copies = Bf16Weights(model)
    n = sum(q.numel() for q in params)
    torch.manual_seed(0)
    grads = {bf16: [torch.randn_like(h) * 1e-3 for h in (copies.holders(params) if bf16 else params)]
             for bf16 in (True, False)}  # fmt: skip
    start = [q.detach().clone() for q in params]
    norm = torch.tensor(2.0, device=device)  # clips by half
    result = {"size": a.size, "parameters": n, "tensors": len(params), "copied": len(copies),
              "torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "ms": {}}  # fmt: skip
    first = {}
    foreach, per_tensor = compiled._adamw, compiled._adamw_per_tensor
    for name, fn, bf16, zero in [("bf16 copies, zeroed", foreach, True, True),
                                 ("bf16 copies, not zeroed", foreach, True, False),
                                 ("bf16 copies, zeroed, per tensor", per_tensor, True, True),
                                 ("bf16 copies, not zeroed, per tensor", per_tensor, True, False),
                                 ("fp32 gradients, zeroed", foreach, False, True),
                                 ("fp32 gradients, not zeroed", foreach, False, False),
                                 ("fp32 gradients, not zeroed, per tensor", per_tensor, False, False)]:  # fmt: skip
        torch._dynamo.reset()
        with torch.no_grad():
            torch._foreach_copy_(params, start)
        copies.refresh()
        for q in params:
            q.grad = None
        for h, g in zip(copies.holders(params) if bf16 else params, grads[bf16], strict=True):
            h.grad = g.clone()
        step = compiled.AdamWStep(torch.optim.AdamW(params, lr=1e-5), copies if bf16 else None)
        step.update = torch.compile(fn, backend=compiled.BACKEND, dynamic=False)
        step.step(norm, 1.0, zero)
        if zero and bf16:
            first[name] = [q.detach().clone() for q in params] + [c.detach().clone() for *_, c in copies.slots]
        result["ms"][name] = timed_ms(lambda step=step, zero=zero: step.step(norm, 1.0, zero), a.repeat)
        print(f"{name}: {result['ms'][name]:.2f} ms", flush=True)
    result["per_tensor_first_update_bitwise_equal"] = all(
        torch.equal(x, y) for x, y in zip(*first.values(), strict=True))  # fmt: skip
    for q, g in zip(params, grads[False], strict=True):
        q.grad = g
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device in ("cuda", "cpu"))
    result["ms"]["torch fused AdamW, fp32 gradients"] = timed_ms(opt.step, a.repeat)
    x = torch.empty(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    ms = timed_ms(lambda: y.copy_(x), a.repeat)
    result["copy_tb_per_s"] = 2 * x.numel() * 4 / ms / 1e9
    emit(result, a.out)


if __name__ == "__main__":
    main()
