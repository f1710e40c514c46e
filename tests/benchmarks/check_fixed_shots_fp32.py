"""Greedy texts of fixed-shot prompts, whole and from the shared prefix's KV cache, in fp32 (not run in CI).

    python tests/benchmarks/check_fixed_shots_fp32.py 128 [--out result.json]     # on the GPU
    SIZE=tiny .venv/bin/python tests/benchmarks/check_fixed_shots_fp32.py 8       # CPU smoke run

In bf16 a randomly initialised model's logits are nearly flat, so two kernels that sum in another
order flip near-ties and the texts part (``bench_gpu.py``'s fixed-shot generation reports how
many stay the same). In fp32 the path from the shared prefix (:mod:`ptft.evaluate.prefix`) must
give the texts of the whole prompts: this script generates both, with the static decoder compiled
as on a GPU, for ``n`` XSum-like prompts behind the same four demonstrations (cut to the window
as the evaluator cuts them), and counts the equal texts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from bench_gpu import SIZES, build_model, fixed_shots, word_tokenizer, xsum_like

from ptft.evaluate.forward import set_compile
from ptft.evaluate.generate import generate_greedy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", type=int)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    size = os.environ.get("SIZE", "olmo-1b")
    vocab, seed = SIZES[size]["vocab_size"], 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(size, seed).to(device).eval()
    set_compile(model, True)
    tok = word_tokenizer(vocab)
    prompts = fixed_shots(xsum_like, a.items, vocab, seed)
    texts = {}
    with torch.no_grad():
        for shared in (False, True):
            t = time.perf_counter()
            texts[shared] = generate_greedy(model, tok, prompts, 60, "\n", 64, decoder="static", shared_prefix=shared)
            print(f"{'shared prefix' if shared else 'whole'}: {time.perf_counter() - t:.1f} s with compilation")
    result = {"command": " ".join(["python", *sys.argv]), "dtype": "float32", "items": a.items,
              "same_texts": sum(x == y for x, y in zip(texts[False], texts[True], strict=True)),
              "distinct_texts": len(set(texts[False])),
              "mean_words": float(np.mean([len(t.split()) for t in texts[False]]))}  # fmt: skip
    print(result)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
