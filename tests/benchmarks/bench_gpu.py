"""Fine-tuning and evaluation throughput of an OLMo-1B-architecture model on one GPU (not run in CI).

    python tests/benchmarks/bench_gpu.py --out bench_gpu.json                          # on the GPU
    .venv/bin/python tests/benchmarks/bench_gpu.py --size tiny --steps 4 --eval-items 8  # CPU smoke run

The model is ``transformers``' ``OlmoForCausalLM`` with the ``config.json`` of
``allenai/OLMo-1B-hf`` (1.18 B parameters, tied embeddings), randomly initialised: no weights
can be downloaded on the benchmark machine, and speed does not depend on their values. Token
ids are random too; only the lengths matter.

**Fine-tuning**, for each length profile and method, ours and ``transformers.Trainer`` side by
side in one process, each after a warm-up run of a few steps:

- profiles: ``mnli`` (MNLI in the default format, mean about 60 tokens, a 2-token completion:
  :func:`bench_finetune.mnli_like`) and ``xsum`` (an XSum article, lognormal with median 470
  tokens, σ 0.6, 30–1900, mean about 560; a summary of median 28 tokens, σ 0.35, 5–80, plus
  EOS; loss on the summary only): Narayan et al. (2018) report 431 words per article and 23
  per summary, about 1.3 GPT-NeoX tokens a word;
- the paper's effective batch of 8: 8 examples per optimizer step, AdamW, linear schedule,
  3 % warmup, clipping at 1.0, bf16 autocast over fp32 master weights (the paper's bf16);
- methods: ``full`` and ``lora`` (``peft``, ptft's defaults: r 8, alpha 16, dropout 0.05,
  all linear layers);
- ``transformers.Trainer`` with its defaults (padding collator, random sampler, its default
  optimizer), ``bf16=True``, micro-batch 8 and ptft's lr schedule, as in ``bench_finetune``;
  ours (:func:`ptft.finetune.train.train_loop`) replays Trainer's batches, packed.

Reported per run: tokens/s (real tokens of the run over the wall time of the whole ``train``
call), MFU = model FLOPs / time / the GPU's dense bf16 peak, with model FLOPs 6·N·tokens for
full fine-tuning and 4·N·tokens for LoRA (no weight gradients of the frozen weights), N all
parameters; peak GPU memory (``max_memory_allocated``: weights, gradients, optimizer state,
activations); validation loss on 64 held-out examples.

**Evaluation**, on a bf16 copy of the same model (as ``ptft evaluate`` loads it on a GPU),
batch size 16 (the Amuro & Char study's) and 64, 4-shot contexts as the study scores them:

- TokenProb (:func:`ptft.evaluate.tokenprob.score_token_prob`): MNLI-like 4-shot prompts
  (5 MNLI-like examples, about 300 tokens); items/s;
- generation (:func:`ptft.evaluate.generate.generate_greedy`): XSum-like 4-shot prompts cut to
  the window as the evaluator cuts them, greedy, 60 new tokens, stop at a newline; generated
  tokens/s and items/s;
- multiple choice (:func:`ptft.evaluate.multiple_choice.score_multiple_choice`): a context of
  about 250 tokens, 4 choices of about 25 tokens (HellaSwag-like); items/s;
- fixed shots (``evaluate.fewshot: fixed``, paths ``tokenprob_fixed`` and ``generation_fixed``):
  the same four demonstrations before every item's own prompt, compiled, scored as whole
  prompts and then from the shared prefix's KV cache (:mod:`ptft.evaluate.prefix`); items/s,
  the speed-up, and how many predictions are the same.

Prompts are words ``t<id>`` of a word-level tokenizer over the model's vocabulary, so that the
evaluation functions run unchanged from text. Results go to ``--out`` as JSON; the last lines
printed are a summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from bench_finetune import BATCH, EOS, PAD, mnli_like, run_hf_trainer, run_ours, synchronize
from report import emit

from ptft.data.prompts import Prompt
from ptft.finetune import bf16_weights, graphs, methods
from ptft.finetune import compiled as compiled_step
from ptft.finetune.batching import IGNORE
from ptft.finetune.train import peak_flops, validation_loss

# allenai/OLMo-1B-hf's and OLMo-7B-hf's config.json (bench_sharded.py); "tiny" keeps their shape at a
# size a CPU runs in seconds.
SIZES = {
    "olmo-1b": dict(vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
                    rope_theta=10000.0, attention_bias=False, clip_qkv=None, tie_word_embeddings=True),
    "olmo-7b": dict(vocab_size=50304, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                    rope_theta=10000.0, attention_bias=False, clip_qkv=None, tie_word_embeddings=False),
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True),
}  # fmt: skip
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}
EVAL_BATCH = 16
SHOTS = 4
# Model FLOPs per token per parameter: forward 2, backward 4 (activation and weight gradients);
# LoRA computes no gradient for the frozen weights.
FLOPS_PER_TOKEN = {"full": 6, "lora": 4}


def build_model(size: str, seed: int):
    from transformers import OlmoConfig, OlmoForCausalLM

    torch.manual_seed(seed)
    config = OlmoConfig(**SIZES[size], pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)
    return OlmoForCausalLM(config)


def xsum_like(n: int, vocab: int, seed: int, max_length: int = 2048) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    article = np.clip(rng.lognormal(np.log(470), 0.6, n), 30, 1900).astype(int)
    summary = np.clip(rng.lognormal(np.log(28), 0.35, n), 5, 80).astype(int)
    out = []
    for a, s in zip(article, summary, strict=True):
        prompt = rng.integers(10, vocab, 8 + a).tolist()  # 8: the format's "### Input: ... ### Summary: "
        target = rng.integers(10, vocab, s).tolist() + [EOS]
        ids = (prompt + target)[:max_length]
        out.append((ids, ([IGNORE] * len(prompt) + target)[:max_length]))
    return out


PROFILES = {"mnli": mnli_like, "xsum": xsum_like}


def word_tokenizer(vocab: int):
    """A ``transformers`` tokenizer whose words ``t<id>`` are the model's token ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    # generate()'s stop-string matcher decodes every token after the word "abcdef", and needs a
    # token holding the stop string (a newline).
    del words["t3"], words["t4"]
    words["abcdef"], words["\n"] = 3, 4
    tok = Tokenizer(WordLevel(words, unk_token="abcdef"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.pad_token, fast.eos_token = f"t{PAD}", f"t{EOS}"
    return fast


def as_text(ids) -> str:
    return " ".join(f"t{i}" for i in ids)


def fixed_shots(make, n: int, vocab: int, seed: int) -> list[Prompt]:
    """``evaluate.fewshot: fixed``: the same four demonstrations before each of ``n`` items' prompts,
    with their part starts, so that the evaluator cuts a long prompt at a demonstration."""
    demos = [as_text(x) for x, _ in make(SHOTS, vocab, seed + 999)]
    starts = list(np.cumsum([0] + [len(d) + 1 for d in demos]))
    queries = [make(1, vocab, seed + 2000 + i)[0] for i in range(n)]
    return [Prompt(" ".join([*demos, as_text([t for t, y in zip(*q, strict=True) if y == IGNORE])]), starts)
            for q in queries]  # fmt: skip


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def prepared(base, method: str, device: str, seed: int):
    """A fresh copy of ``base`` on ``device``, with LoRA adapters (seeded, so both sides get the same) for lora."""
    model = copy.deepcopy(base).to(device)
    if method == "lora":
        torch.manual_seed(seed)
        model = methods.apply_lora(model, LORA)
    return model


def packed_check(base, device: str, vocab: int, seed: int) -> dict:
    """Loss and gradients of packed rows (ours) against padded batches (stock SDPA), under the runs' precision.

    On a GPU in bf16 the packed rows take the variable-length flash-attention path, which the
    trainer's own start-up check (run in fp32) does not reach.
    """
    from ptft.finetune.batching import collate, collate_padded
    from ptft.finetune.packed_attention import VARLEN_ATTN, use_packed_attention
    from ptft.finetune.train import completion_loss

    model = copy.deepcopy(base).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    out = {"varlen_flash_attention": VARLEN_ATTN is not None and device == "cuda"}
    for profile, make in PROFILES.items():
        examples = make(BATCH, vocab, seed + 7)
        results = []
        for packed in (True, False):
            model.zero_grad(set_to_none=True)
            batch = collate(examples, "packed", PAD, device) if packed else collate_padded(examples, PAD, device)
            with use_packed_attention(model) if packed else contextlib.nullcontext(), autocast:
                loss = completion_loss(model, batch, fast=True)
            loss.backward()
            grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
            results.append((loss.detach().float(), grads))
        (lp, gp), (lr_, gr) = results
        out[profile] = {"loss_rel_diff": float((lp - lr_).abs() / lr_.abs()),
                        "grad_rel_diff": float((gp - gr).norm() / gr.norm())}  # fmt: skip
    return out


def finetune_pair(base, profile: str, method: str, steps: int, warmup_steps: int, lr: float, seed: int, device: str,
                  vocab: int, trainer: bool = True, compiled: bool = False,
                  variants: tuple[str, ...] = ()) -> dict:  # fmt: skip
    """``variants``: the keys of COMPILED_VARIANTS timed where ``compiled`` (all by default; ptft's always)."""
    variants = {k: COMPILED_VARIANTS[k] for k in dict.fromkeys(("ours_compiled", *(variants or COMPILED_VARIANTS)))}
    examples = PROFILES[profile](steps * BATCH, vocab, seed)
    valid = PROFILES[profile](64, vocab, seed + 1)
    tokens = sum(len(x) for x, _ in examples)
    bf16 = device == "cuda"
    precision = "bf16" if bf16 else "fp32"
    n_params = sum(p.numel() for p in base.parameters())
    peak = peak_flops(device, {})

    # Warm-up: CUDA context, cuBLAS handles and kernel selection stay out of the timed runs.
    warm = examples[: warmup_steps * BATCH]
    warm_batches = [list(range(i * BATCH, (i + 1) * BATCH)) for i in range(warmup_steps)]
    if trainer:
        model = prepared(base, method, device, seed)
        _, warm_batches = run_hf_trainer(model, warm, warmup_steps, lr, seed, vocab, bf16)
    model = prepared(base, method, device, seed)
    run_ours(model, warm, warmup_steps, lr, seed, warm_batches, precision)
    if compiled:  # the compilation stays out of the timed run, as in a long one: each variant below
        for variant in variants.values():
            with compiled_variant(*variant):
                run_ours(model, warm, warmup_steps, lr, seed, warm_batches, precision,
                         {"cuda_graphs": "auto", "compile": "auto"})  # fmt: skip
    del model
    release()

    result = {"profile": profile, "method": method, "steps": steps, "tokens": tokens,
              "mean_example_tokens": tokens / len(examples)}  # fmt: skip
    if trainer:
        hf_model = prepared(base, method, device, seed)
        hf_s, batches = run_hf_trainer(hf_model, examples, steps, lr, seed, vocab, bf16)
        hf_mem = peak_memory_gib()
        result["trainer_padded_tokens_ratio"] = sum(BATCH * max(len(examples[i][0]) for i in b)
                                                    for b in batches) / tokens  # fmt: skip
        hf_loss = validation_loss(hf_model, valid, "grouped", PAD, BATCH, False, device)
        del hf_model
        release()
    else:  # Trainer's random order, without Trainer
        order = np.random.default_rng(seed).permutation(len(examples)).tolist()
        batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]

    def ours(cuda_graphs, compile=False) -> tuple[float, float | None, float, list[float], dict]:
        """(seconds, peak GiB, validation loss, step losses, {loop_s, and the graphs' counts where any were made})."""
        model = prepared(base, method, device, seed)
        made, real, losses, stats = [], graphs.Graphs, [], {}
        graphs.Graphs = lambda *a, **k: made.append(real(*a, **k)) or made[-1]
        try:
            seconds = run_ours(model, examples, steps, lr, seed, batches, precision,
                               {"cuda_graphs": cuda_graphs, "compile": compile}, losses, stats)  # fmt: skip
        finally:
            graphs.Graphs = real
        if made:  # counts only: a Graphs object would keep its captures' memory
            g = made[0]
            stats["cuda_graphs"] = {"captured": g.captured, "replayed": g.replayed, "off": g.off,
                                    "capture_s": g.capture_s, "tokens_per_s_without_captures":
                                    tokens / (seconds - g.capture_s)}  # fmt: skip
        made.clear()
        memory, loss = peak_memory_gib(), validation_loss(model, valid, "grouped", PAD, BATCH, False, device)
        del model
        release()
        return seconds, memory, loss, losses, stats

    ours_s, ours_mem, ours_loss, ours_losses, ours_stats = ours("auto")

    def side(seconds: float, memory: float | None, loss: float, stats: dict | None = None) -> dict:
        flops = FLOPS_PER_TOKEN[method] * n_params * tokens / seconds
        out = {"seconds": seconds, "tokens_per_s": tokens / seconds, "model_tflops_per_s": flops / 1e12,
               "mfu": flops / peak if peak else None, "peak_memory_gib": memory, "validation_loss": loss}  # fmt: skip
        if stats:
            # The loop's own time, as a run's record counts it (train.RunRecord.tokens_per_s): without the
            # setup before the first step (the optimizer's creation, train.check_shortcuts' fp32 forwards).
            loop = stats["loop_s"]
            loop_flops = FLOPS_PER_TOKEN[method] * n_params * tokens / loop
            out |= {"loop_s": loop, "loop_tokens_per_s": tokens / loop, "loop_mfu": loop_flops / peak if peak else None}
            if "cuda_graphs" in stats:
                out["cuda_graphs"] = stats["cuda_graphs"]
        return out

    result["ours"] = side(ours_s, ours_mem, ours_loss, ours_stats)
    if "cuda_graphs" in ours_stats:  # finetune.cuda_graphs: ours as above, then eagerly, side by side
        eager_s, eager_mem, eager_loss, eager_losses, eager_stats = ours(False)
        result["ours_eager"] = side(eager_s, eager_mem, eager_loss, eager_stats)
        result["graphs_speedup"] = eager_s / ours_s
        result["graphs_step_loss_rel_diff"] = rel_diff(ours_losses, eager_losses)
    if compiled:  # finetune.compile: the blocks compiled, graphs where they apply; the variants side by side
        comp = {}
        for key, variant in variants.items():
            with compiled_variant(*variant):
                comp[key] = ours("auto", "auto")
        comp_s, comp_losses = comp["ours_compiled"][0], comp["ours_compiled"][3]
        for key, (seconds, memory, loss, _, stats) in comp.items():
            result[key] = side(seconds, memory, loss, stats)
        result["compiled_speedup"] = ours_s / comp_s
        result["compiled_step_loss_rel_diff"] = rel_diff(comp_losses, ours_losses)
        # each variant against ptft's: (what the variant lacks)_speedup, and the step losses' distance
        for key, (name, *_) in LACKING.items():
            if key in comp:
                result[f"{name}_speedup"] = comp[key][0] / comp_s
                result[f"{name}_step_loss_rel_diff"] = rel_diff(comp_losses, comp[key][3])
    if trainer:
        result["transformers_trainer"] = side(hf_s, hf_mem, hf_loss)
        result["speedup"] = hf_s / ours_s
    return result


def rel_diff(losses: list[float], ref: list[float]) -> dict:
    """Step losses' relative distance from ``ref``'s: largest and mean."""
    diff = np.abs(np.array(losses) - np.array(ref)) / np.abs(np.array(ref))
    return {"max": float(diff.max()), "mean": float(diff.mean())}


# The compiled loop's variants timed: (bf16 copies of the matmul weights, the AdamW step's form, graphs owning
# their gradients); the first is ptft's.
COMPILED_VARIANTS = {"ours_compiled": (True, "per_tensor", True),
                     "ours_compiled_fp32_weights": (False, "per_tensor", True),
                     "ours_compiled_foreach_step": (True, "foreach", True),
                     "ours_compiled_kept_grads": (True, "per_tensor", False)}  # fmt: skip


# Variants that lack one of ptft's changes: (the change, the variant in words, ptft's in words).
LACKING = {"ours_compiled_fp32_weights": ("bf16_weights", "fp32 weights under autocast", "bf16 copies"),
           "ours_compiled_foreach_step": ("per_tensor_step", "AdamW step in foreach ops", "per tensor"),
           "ours_compiled_kept_grads": ("own_grads", "graphs adding into kept gradients", "owned")}  # fmt: skip


@contextlib.contextmanager
def compiled_variant(copies: bool, form: str, own_grads: bool):
    """The compiled loop with bf16 copies (ptft.finetune.bf16_weights) or without, the step in ``form``
    (ptft.finetune.compiled.STEP_FORM), and graphs that own their gradients or add into kept ones
    (ptft.finetune.graphs.OWN_GRADS)."""
    was = bf16_weights.ENABLED, compiled_step.STEP_FORM, graphs.OWN_GRADS
    bf16_weights.ENABLED, compiled_step.STEP_FORM, graphs.OWN_GRADS = copies, form, own_grads
    try:
        yield
    finally:
        bf16_weights.ENABLED, compiled_step.STEP_FORM, graphs.OWN_GRADS = was


def timed(fn) -> float:
    synchronize()
    t = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - t


def stripped(out: dict) -> dict:
    """Evaluation results without the predictions kept to compare the paths, at any depth."""
    return {k: stripped(v) if isinstance(v, dict) else v for k, v in out.items() if k != "predictions"}


def allocator_counts(device: str) -> dict[str, int]:
    """The CUDA caching allocator's retries (cache freed, allocation tried again) and out-of-memory errors so far."""
    if device != "cuda":
        return {}
    stats = torch.cuda.memory_stats()
    return {"alloc_retries": stats.get("num_alloc_retries", 0), "ooms": stats.get("num_ooms", 0)}


def eval_throughput(base, device: str, n: int, vocab: int, seed: int, batch_size: int,
                    names: tuple[str, ...] = ("tokenprob", "multiple_choice", "generation"),
                    save=None) -> dict:  # fmt: skip
    """Items/s of each evaluation path (the module's docstring); ``save(results so far)`` after each path."""
    from unittest import mock

    from ptft.evaluate import generate as generate_module
    from ptft.evaluate import multiple_choice as multiple_choice_module
    from ptft.evaluate import tokenprob as tokenprob_module
    from ptft.evaluate.forward import set_compile
    from ptft.evaluate.generate import auto_batch_size, generate_greedy
    from ptft.evaluate.multiple_choice import score_multiple_choice
    from ptft.evaluate.tokenprob import score_token_prob

    model = copy.deepcopy(base).to(device, torch.bfloat16 if device == "cuda" else torch.float32).eval()
    tok = word_tokenizer(vocab)
    rng = np.random.default_rng(seed)

    def shots(make, i: int) -> str:
        # A 4-shot prompt: four demonstrations (prompt and answer) and the item's prompt.
        demos = make(SHOTS + 1, vocab, seed + 1000 + i)
        ids = [t for x, _ in demos[:SHOTS] for t in x] + [t for t, y in zip(*demos[SHOTS], strict=True) if y == IGNORE]
        return as_text(ids)

    cls_prompts = [shots(mnli_like, i) for i in range(n)]
    gen_prompts = [shots(xsum_like, i) for i in range(n)]
    fixed_prompts = {"tokenprob": fixed_shots(mnli_like, n, vocab, seed),
                     "generation": fixed_shots(xsum_like, n, vocab, seed)}  # fmt: skip
    mc_contexts = [as_text(rng.integers(10, vocab, int(rng.integers(200, 300)))) for _ in range(n)]
    mc_choices = [[as_text(rng.integers(10, vocab, int(rng.integers(15, 35)))) for _ in range(4)] for _ in range(n)]
    labels = ["t5", "t6", "t7"]

    out = {"items": n, "batch_size": batch_size, "dtype": str(next(model.parameters()).dtype)}
    gen_mean = float(np.mean([min(len(p.split()), 2048 - 60) for p in gen_prompts]))

    def tokenprob():
        return score_token_prob(model, tok, cls_prompts, labels, batch_size)[0].tolist()

    def generation():
        return generate_greedy(model, tok, gen_prompts, 60, "\n", batch_size, decoder=decoder)

    chosen: list[int] = []  # evaluate.generation_batch_size: auto, as it chose

    def generation_auto():
        def recorded(*args, **kwargs):
            chosen.append(auto_batch_size(*args, **kwargs))
            return chosen[-1]

        with mock.patch.object(generate_module, "auto_batch_size", recorded):
            return generate_greedy(model, tok, gen_prompts, 60, "\n", "auto", decoder="static")

    def choices():
        return [int(np.argmax(s)) for s in score_multiple_choice(model, tok, mc_contexts, mc_choices, batch_size)]

    def fixed(kind: str, shared: bool):
        prompts = fixed_prompts[kind]
        if kind == "tokenprob":
            return score_token_prob(model, tok, prompts, labels, batch_size, shared_prefix=shared)[0].tolist()
        # Measured from the prefix although the compiled decoder runs whole prompts (PREFIX_WHEN_COMPILED).
        with mock.patch.object(generate_module, "PREFIX_WHEN_COMPILED", True):
            return generate_greedy(model, tok, prompts, 60, "\n", batch_size, decoder="static", shared_prefix=shared)

    # Each path as it ran before issue 27 (today: eager, TokenProb left-padded with the vocabulary
    # projection at every position, generate()), then eager as it runs now, then compiled
    # (evaluate.compile, evaluate.decoder: static). Each is timed on its second pass over the items:
    # the first compiles, and it warms the allocator and the kernels' autotuning for every batch
    # shape (a warm-up on one batch left the first path measured 1.7x slow).
    def old_choices():  # the choices continue from the context's KV cache, as on a CPU
        with mock.patch.object(multiple_choice_module, "PACKED_DEVICES", ()):
            return choices()

    def old_tokenprob():
        from ptft.evaluate.batching import left_pad

        def logits(model, seqs, pad_id, past=None):
            return model(**left_pad(seqs, pad_id, model.device)).logits[:, -1]

        with mock.patch.object(tokenprob_module, "last_logits", logits):
            return tokenprob()

    with torch.no_grad():
        for mode in ("today", "eager", "compiled"):
            set_compile(model, mode == "compiled")
            decoder = "static" if mode == "compiled" else "generate"
            paths = {
                "tokenprob": old_tokenprob if mode == "today" else tokenprob,
                "multiple_choice": old_choices if mode == "today" else choices,
                "generation": generation,
            }
            if mode == "compiled" and device == "cuda":  # auto reads the GPU's free memory
                paths["generation_auto"] = generation_auto
            paths = {k: v for k, v in paths.items() if k in names}
            if mode == "eager":
                paths.pop("generation", None)  # eager generation is today's
            for name, fn in paths.items():
                warm_s = timed(fn)
                got: list = []
                before = allocator_counts(device)
                s = timed(lambda fn=fn, got=got: got.extend(fn()))
                row = {"seconds": s, "items_per_s": n / s, "first_pass_s": warm_s}
                # A batch near the memory's limit makes the allocator free its cache and retry, or
                # run out (the batch then runs in halves): both slow a pass without failing it.
                row.update({k: v - before[k] for k, v in allocator_counts(device).items()})
                if name == "generation_auto":
                    row["batch_size"] = chosen[-1]
                today = out.get("today", {}).get(name.removesuffix("_auto"))
                if mode != "today" and today is not None:
                    row["same_as_today"] = sum(a == b for a, b in zip(got, today["predictions"], strict=True))
                row["predictions"] = got
                out.setdefault(mode, {})[name] = row
                if save:
                    save(stripped(out))
                release()
        # Fixed shots (evaluate.fewshot: fixed), compiled: the whole prompts, then from the shared prefix's cache.
        for kind in [k for k in ("tokenprob", "generation") if f"{k}_fixed" in names]:
            set_compile(model, True)
            rows = {}
            for shared in (False, True):
                warm_s = timed(lambda kind=kind, shared=shared: fixed(kind, shared))
                got = []
                s = timed(lambda kind=kind, shared=shared, got=got: got.extend(fixed(kind, shared)))
                rows["shared_prefix" if shared else "whole"] = {"seconds": s, "items_per_s": n / s,
                                                               "first_pass_s": warm_s, "predictions": got}  # fmt: skip
                if save:  # each half kept as it ends: the prefix's first pass compiles for minutes
                    save(stripped({**out, "fixed_shots": {**out.get("fixed_shots", {}), kind: rows}}))
                release()
            whole, cached = rows["whole"].pop("predictions"), rows["shared_prefix"].pop("predictions")
            rows["same_as_whole"] = sum(a == b for a, b in zip(whole, cached, strict=True))
            rows["speedup"] = rows["whole"]["seconds"] / rows["shared_prefix"]["seconds"]
            rows["mean_prompt_tokens"] = float(np.mean([min(len(p.split()), 2048 - 60) for p in fixed_prompts[kind]]))
            out.setdefault("fixed_shots", {})[kind] = rows
            if save:
                save(stripped(out))
    out = stripped(out)
    out["tokenprob_mean_prompt_tokens"] = float(np.mean([len(p.split()) for p in cls_prompts]))
    out["generation_mean_prompt_tokens"] = gen_mean
    out["peak_memory_gib"] = peak_memory_gib()
    return out


def summary_lines(result: dict) -> list[str]:
    lines = [f"{result['device']}, {result['size']} ({result['parameters'] / 1e9:.3f} B parameters)",
             f"{'profile':8} {'method':6} {'ours tok/s':>11} {'Trainer tok/s':>14} {'speedup':>8} "
             f"{'ours MFU':>9} {'Trainer MFU':>12} {'ours GiB':>9} {'Trainer GiB':>12}"]  # fmt: skip

    def pct(x):
        return f"{100 * x:.1f}%" if x is not None else "-"

    def gib(x):
        return f"{x:.1f}" if x is not None else "-"

    for r in result["finetune"]:
        o, t = r["ours"], r.get("transformers_trainer")
        trainer = f"{t['tokens_per_s']:14.0f} {r['speedup']:7.2f}x" if t else f"{'-':>14} {'-':>8}"
        lines.append(f"{r['profile']:8} {r['method']:6} {o['tokens_per_s']:11.0f} {trainer} {pct(o['mfu']):>9} "
                     f"{pct(t and t['mfu']):>12} {gib(o['peak_memory_gib']):>9} "
                     f"{gib(t and t['peak_memory_gib']):>12}")  # fmt: skip
        if "ours_eager" in r:
            g, e = o["cuda_graphs"], r["ours_eager"]
            lines.append(f"  cuda graphs: {g['captured']} shapes in {g['capture_s']:.1f} s, "
                         f"{g['tokens_per_s_without_captures']:.0f} tok/s without them; eagerly {e['tokens_per_s']:.0f}"
                         f" tok/s ({r['graphs_speedup']:.2f}x), step losses within "
                         f"{r['graphs_step_loss_rel_diff']['max']:.1e}")  # fmt: skip
        if "ours_compiled" in r:
            c = r["ours_compiled"]
            lines.append(f"  compiled blocks: {c['tokens_per_s']:.0f} tok/s ({r['compiled_speedup']:.2f}x ours; the "
                         f"loop alone {c['loop_tokens_per_s']:.0f}, MFU {pct(c['loop_mfu'])}), step losses within "
                         f"{r['compiled_step_loss_rel_diff']['max']:.1e}")  # fmt: skip
            for key, (name, without, what) in LACKING.items():
                if key in r:
                    lines.append(f"  compiled, {without}: {r[key]['tokens_per_s']:.0f} tok/s ({what} "
                                 f"{r[f'{name}_speedup']:.2f}x that, step losses within "
                                 f"{r[f'{name}_step_loss_rel_diff']['max']:.1e})")  # fmt: skip
    for e in result.get("evaluate", []):
        for mode in ("today", "eager", "compiled"):
            paths = ", ".join(f"{k} {v['items_per_s']:.1f}" for k, v in e.get(mode, {}).items())
            lines.append(f"eval batch {e['batch_size']}, {mode}: items/s {paths}")
        for kind, r in e.get("fixed_shots", {}).items():
            lines.append(f"eval batch {e['batch_size']}, fixed shots, {kind}: items/s {r['whole']['items_per_s']:.1f} "
                         f"whole, {r['shared_prefix']['items_per_s']:.1f} from the shared prefix ({r['speedup']:.2f}x, "
                         f"{r['same_as_whole']} of {e['items']} the same)")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="olmo-1b")
    p.add_argument("--steps", type=int, default=200, help="timed optimizer steps per run")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--profiles", default="mnli,xsum")
    p.add_argument("--methods", default="full,lora")
    p.add_argument("--lr", type=float, default=2e-6, help="the study's lr (full); LoRA runs use 100x")
    p.add_argument("--eval-items", type=int, default=512, help="items per evaluation path (0: skip evaluation)")
    p.add_argument(
        "--eval-paths", default="tokenprob,multiple_choice,generation,generation_auto,tokenprob_fixed,generation_fixed"
    )
    p.add_argument("--eval-batch-sizes", default=f"{EVAL_BATCH},64", help="the study's 16, and a larger one")
    p.add_argument(
        "--trainer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run transformers.Trainer beside ours (--no-trainer: ours only, in Trainer's random order)",
    )
    p.add_argument(
        "--graph-max-tokens",
        type=int,
        default=graphs.MAX_TOKENS,
        help="finetune.cuda_graphs: the longest row replayed as a graph (ptft.finetune.graphs.MAX_TOKENS)",
    )
    p.add_argument(
        "--compiled-variants",
        default=",".join(COMPILED_VARIANTS),
        help="with --finetune-compile: the compiled loop's variants timed (ours_compiled, ptft's, always)",
    )
    p.add_argument(
        "--finetune-compile",
        action="store_true",
        help="also run ours with finetune.compile: auto (compiled blocks, graphs where they apply), side by side",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    graphs.MAX_TOKENS = a.graph_max_tokens
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(2)
    base = build_model(a.size, a.seed)  # stays on the CPU; every run gets a fresh copy on the device
    vocab = SIZES[a.size]["vocab_size"]
    result = {
        "size": a.size,
        "parameters": sum(p.numel() for p in base.parameters()),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "peak_bf16_flops": peak_flops(device, {}),
        "torch": torch.__version__,
        "examples_per_step": BATCH,
        "finetune": [],
    }
    import transformers

    result["transformers"] = transformers.__version__
    result["packed_check"] = packed_check(base, device, vocab, a.seed)
    release()
    print("packed rows against padded batches:", result["packed_check"], flush=True)
    for profile in filter(None, a.profiles.split(",")):
        for method in a.methods.split(","):
            lr = a.lr * (100 if method == "lora" else 1)
            r = finetune_pair(base, profile, method, a.steps, a.warmup_steps, lr, a.seed, device, vocab, a.trainer,
                              a.finetune_compile, tuple(filter(None, a.compiled_variants.split(","))))  # fmt: skip
            result["finetune"].append(r)
            print("\n".join(summary_lines(result)[2:]), flush=True)
            if a.out:  # what is done so far survives a run cut short
                Path(a.out).write_text(json.dumps(result, indent=2))
    result["evaluate"] = []
    for batch_size in map(int, a.eval_batch_sizes.split(",") if a.eval_items else []):
        result["evaluate"].append({})

        def save(partial: dict, at: int = len(result["evaluate"]) - 1) -> None:
            result["evaluate"][at] = partial
            if a.out:  # what is done so far survives a run cut short
                Path(a.out).write_text(json.dumps(result, indent=2))

        result["evaluate"][-1] = eval_throughput(base, device, a.eval_items, vocab, a.seed, batch_size,
                                                 tuple(a.eval_paths.split(",")), save)  # fmt: skip
        release()
    emit(result, a.out)
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main()
