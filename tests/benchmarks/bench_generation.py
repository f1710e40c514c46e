"""Greedy generation paths side by side in one process, the ground of issue 27's faster generation (not run in CI).

    python3 tests/benchmarks/bench_generation.py --out generation.json                  # on the GPU
    .venv/bin/python tests/benchmarks/bench_generation.py --size tiny --items 8 --batch-size 4   # CPU smoke run

The model and prompts are ``bench_gpu``'s (OLMo-1B's architecture, random init, bf16 on a GPU; 4-shot
XSum-like prompts, 60 new tokens, stop at a newline). Paths, each after a warm-up batch:

- ``today``: :func:`ptft.evaluate.generate.generate_greedy` (``generate`` with a dynamic KV cache and
  ``stop_strings``, whose matcher does Python work every step);
- ``token_stop``: the same with the stop checked as a tensor op: a row stops once its last token's text
  contains the stop string (for a one-character stop that is exactly where the text first holds it, and
  the output is cut there anyway);
- ``static``: ``generate`` with ``cache_implementation="static"`` (transformers compiles the decode step)
  and ``stop_strings``;
- ``static_token_stop``: both;
- ``static_decoder``: ptft's ``evaluate.decoder: static``
  (:class:`ptft.evaluate.generate.StaticDecoder`): our greedy loop over a static KV cache sized to the
  batch, the prompt run once eagerly, the one-token decode step ``torch.compile``'d with
  ``mode="reduce-overhead"`` (CUDA graphs), the stop a tensor check read back every 8 steps.

``same_as_today`` counts the items whose text equals the ``today`` path's. A random-init model's logits
are nearly flat, so greedy choices are near-ties that another kernel's bf16 rounding flips; the count is
a check of the plumbing, not of equality, until a model with peaked predictions is used.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_gpu import SHOTS, as_text, build_model, word_tokenizer, xsum_like
from report import emit
from transformers import StoppingCriteria, StoppingCriteriaList

from ptft.evaluate.batching import context_limit, left_pad, length_sorted_batches
from ptft.evaluate.encoding import encode_prompts, fit_to_window
from ptft.evaluate.generate import cut_at_stop, generate_greedy
from ptft.finetune.batching import IGNORE

PATHS = ("today", "token_stop", "static", "static_token_stop", "static_decoder")


class TokenStop(StoppingCriteria):
    """Done where the last token is one of ``ids``: one tensor op a step, no decoding."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __call__(self, input_ids, scores, **kwargs):
        return torch.isin(input_ids[:, -1], self.ids)


def generate(model, tok, prompts, max_new: int, stop: str, batch_size: int, path: str) -> list[str]:
    if path == "today":
        return generate_greedy(model, tok, prompts, max_new, stop, batch_size, decoder="generate")
    if path == "static_decoder":
        return generate_greedy(model, tok, prompts, max_new, stop, batch_size, decoder="static")
    window = context_limit(model, max_new)
    encoded, _ = fit_to_window(tok, prompts, encode_prompts(tok, prompts, "auto"), window, "auto")
    stops = torch.tensor([i for i in range(len(tok)) if stop in tok.decode([i])], device=model.device)
    out = [""] * len(prompts)
    for batch in length_sorted_batches([len(e) for e in encoded], batch_size):
        inputs = left_pad([encoded[i] for i in batch], tok.pad_token_id, model.device)
        inputs.pop("position_ids")
        kw = {"max_new_tokens": max_new, "do_sample": False, "eos_token_id": tok.eos_token_id,
              "pad_token_id": tok.pad_token_id}  # fmt: skip
        if path.startswith("static"):
            kw["cache_implementation"] = "static"
        if path.endswith("token_stop"):
            kw["stopping_criteria"] = StoppingCriteriaList([TokenStop(stops)])
        else:
            kw.update(stop_strings=[stop], tokenizer=tok)
        new = model.generate(**inputs, **kw)[:, inputs["input_ids"].shape[1] :]
        for row, i in enumerate(batch):
            out[i] = cut_at_stop(tok.decode(new[row], skip_special_tokens=True), stop)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="olmo-1b")
    p.add_argument("--items", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated; today is always run (the reference)")
    p.add_argument(
        "--check-fp32",
        type=int,
        default=0,
        metavar="N",
        help="also run today's path and static_decoder in fp32 on the first N prompts and count equal texts",
    )
    p.add_argument("--out")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(args.size, 0).to(device, torch.bfloat16 if device == "cuda" else torch.float32).eval()
    vocab = model.config.vocab_size
    tok = word_tokenizer(vocab)

    def shots(i: int) -> str:
        demos = xsum_like(SHOTS + 1, vocab, 1000 + i)
        ids = [t for x, _ in demos[:SHOTS] for t in x] + [t for t, y in zip(*demos[SHOTS], strict=True) if y == IGNORE]
        return as_text(ids)

    prompts = [shots(i) for i in range(args.items)]
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": args.size,
              "items": args.items, "batch_size": args.batch_size, "max_new_tokens": 60,
              "mean_prompt_tokens": float(np.mean([min(len(x.split()), 2048 - 60) for x in prompts]))}  # fmt: skip
    texts = {}
    with torch.no_grad():
        for path in ["today", *[p for p in args.paths.split(",") if p != "today"]]:
            start = time.time()
            generate(model, tok, prompts[: args.batch_size], 60, "\n", args.batch_size, path)
            warm = time.time() - start
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.time()
            texts[path] = generate(model, tok, prompts, 60, "\n", args.batch_size, path)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.time() - start
            same = sum(a == b for a, b in zip(texts[path], texts["today"], strict=True))
            result[path] = {"seconds": seconds, "items_per_s": args.items / seconds, "warmup_s": warm,
                            "same_as_today": same}  # fmt: skip
        if args.check_fp32:
            # In fp32 a rounding difference rarely flips a greedy choice, even on a random model's flat
            # logits: equal texts here check the decoder itself, not bf16's near-ties.
            del model
            model = build_model(args.size, 0).to(device, torch.float32).eval()
            few = prompts[: args.check_fp32]
            ref = generate(model, tok, few, 60, "\n", args.batch_size, "today")
            got = generate(model, tok, few, 60, "\n", args.batch_size, "static_decoder")
            result["fp32_check"] = {"items": len(few), "same": sum(a == b for a, b in zip(ref, got, strict=True))}
    emit(result, args.out)


if __name__ == "__main__":
    main()
