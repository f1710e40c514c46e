"""Learning-dynamics probes scored two ways (or more) side by side in one process (not run in CI):

    .venv/bin/python tests/benchmarks/bench_probes.py --size tiny --prompts 8
    python tests/benchmarks/bench_probes.py --size pythia-410m --prompts 128 --out probes.json   # on a GPU

``padded``: every probe row (prompt and response) in length-sorted right-padded batches
(:func:`ptft.finetune.probes.response_logps`); ``shared``: each distinct prompt run once and its
responses scored on its KV cache (:func:`ptft.finetune.probes.shared_prompt_logps`), as the prober
does. A random model of the named shape (fp32, as the Pythia-410M study trains) and random token
ids shaped like that study's probe set: prompts of 100–256 tokens (its prompts are cut to 256),
12 responses each of 20–200 tokens, EOS scored. Each way is timed on its second pass, the ways
alternating ``--repeat`` times; the best time of each is reported, with its ratio to ``padded``'s and
the largest difference of its summed log-probabilities and argmax sums from ``padded``'s.
``--shared-rows 64,256`` times the shared way at each number of responses a batch.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from functools import partial

import torch
from report import emit
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from ptft.finetune.batching import IGNORE
from ptft.finetune.probes import ROWS_PER_BATCH, SHARED_ROWS_PER_BATCH, response_logps, shared_prompt_logps

SIZES = {
    "pythia-410m": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, vocab_size=50304
    ),  # fmt: skip
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=512),
}
RESPONSE_TYPES = 12


def probe_rows(n_prompts: int, vocab: int, eos: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of n_prompts prompts, each followed by RESPONSE_TYPES responses ending in EOS."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_prompts):
        prompt = [rng.randrange(1, vocab) for _ in range(rng.randint(100, 256))]
        for _ in range(RESPONSE_TYPES):
            response = [rng.randrange(1, vocab) for _ in range(rng.randint(20, 200))] + [eos]
            rows.append((prompt + response, [IGNORE] * len(prompt) + response))
    return rows


def timed(fn, device: torch.device) -> tuple[float, list]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="pythia-410m")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shared-rows", default=str(SHARED_ROWS_PER_BATCH),
                    help="responses a batch of the shared way; several (64,256) time one shared way each")  # fmt: skip
    ap.add_argument("--out")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = GPTNeoXConfig(**SIZES[args.size], max_position_embeddings=2048, eos_token_id=0)
    model = GPTNeoXForCausalLM(config).to(device).eval()
    rows = probe_rows(args.prompts, config.vocab_size, 0, seed=0)
    sizes = [int(n) for n in args.shared_rows.split(",")]
    ways = {"padded": lambda: response_logps(model, rows, ROWS_PER_BATCH, device, argmax=True)}
    for n in sizes:
        ways["shared" if len(sizes) == 1 else f"shared{n}"] = partial(shared_prompt_logps, model, rows, n, argmax=True)
    best, out, peak = {}, {}, {}
    for fn in ways.values():  # the first pass of each: allocator and kernel warm-up
        fn()
    for _ in range(args.repeat):
        for way, fn in ways.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, out[way] = timed(fn, device)
            best[way] = min(best.get(way, seconds), seconds)
            if device.type == "cuda":
                peak[way] = torch.cuda.max_memory_allocated() / 2**30
    shared = [way for way in ways if way != "padded"]
    diff, diff_argmax = {}, {}
    for way in shared:
        pairs = list(zip(out["padded"], out[way], strict=True))
        diff[way] = max(abs(a[0] - b[0]) for a, b in pairs)
        diff_argmax[way] = max(abs(a[2] - b[2]) for a, b in pairs)
    result = {
        "command": "python tests/benchmarks/bench_probes.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": args.size,
        "prompts": args.prompts,
        "rows": len(rows),
        "tokens": sum(len(ids) for ids, _ in rows),
        "seconds": best,
        "rows_per_s": {way: len(rows) / s for way, s in best.items()},
        "padded_rows_per_batch": ROWS_PER_BATCH,
        "shared_rows_per_batch": sizes,
        "time_over_padded": {way: best[way] / best["padded"] for way in shared},
        "max_abs_diff_logp": diff,
        "max_abs_diff_argmax": diff_argmax,
        "peak_gib": peak or None,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
