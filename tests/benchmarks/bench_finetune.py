"""Our fine-tuning loop against ``transformers.Trainer``, side by side in one process (not run in CI).

    .venv/bin/python tests/benchmarks/bench_finetune.py --model toy --steps 150
    .venv/bin/python tests/benchmarks/bench_finetune.py --model pythia-160m --steps 80

Same randomly initialised model (copied), same examples, same hyperparameters: one epoch of
``steps × 8`` examples, 8 examples per optimizer step (micro-batch 8, no accumulation), AdamW
at a fixed lr, linear schedule with 3 % warmup, clipping at 1.0, fp32 on CPU.

- **Data, MNLI-like.** A prompt of ``20 + premise + hypothesis`` tokens, premise ~ lognormal
  (median 22 tokens, σ 0.6, 3–200) and hypothesis ~ lognormal (median 12, σ 0.45, 2–60): the
  right-skewed lengths of MNLI in the default format (mean about 60 tokens). Token ids are
  random; the completion is one of three label tokens, a function of the prompt's first token,
  plus EOS; the loss is on the completion only (labels -100 on the prompt) in both trainers.
- **transformers.Trainer** gets its stock padding collator for labelled sequences
  (``DataCollatorForSeq2Seq``: pad to the longest in the batch, labels padded with -100), its
  default random sampler, no ``group_by_length``, no packing, and ptft's lr schedule (its own
  runs the first warmup step at lr 0, ptft's at ``1/warmup`` of the peak). It runs first; a
  wrapper around its collator records which examples each of its optimizer steps got.
- **Ours** is ``ptft.finetune.train.train_loop``, LM head only on target positions, and
  (``--batching``):
  - ``replay`` (default): *the same examples in every optimizer step as Trainer's*, in its
    order, each micro-batch packed into one row without padding (``batching: packed``,
    attention example by example). The two runs then differ only in how a step is computed,
    so their losses are comparable step for step, not only in distribution;
  - ``grouped``: its own seeded order with length-grouped micro-batches (its default).

Reported: tokens/s of each (real, non-pad tokens of the epoch over the wall time of the whole
``train`` call), their ratio, the validation loss of both trained models on 64 held-out
examples (the same function for both), the largest difference between their weights, and
how many tokens Trainer's padded batches held per real token. Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time

import numpy as np
import torch
from report import emit

from ptft.finetune import train
from ptft.finetune.batching import IGNORE
from ptft.finetune.optim import linear, warmup_steps
from ptft.finetune.train import train_loop, validation_loss

MODELS = {
    # The toy study's model (config.yaml: checkpoints.toy.model, vocab 1024).
    "toy": ("llama", dict(vocab_size=1024, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                          num_attention_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)),
    # EleutherAI/pythia-160m's config.json.
    "pythia-160m": ("gpt_neox", dict(vocab_size=50304, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                     num_attention_heads=12, rotary_pct=0.25, max_position_embeddings=2048,
                                     use_parallel_residual=True, tie_word_embeddings=False)),
}  # fmt: skip
BATCH = 8
WARMUP_RATIO = 0.03
LABEL_IDS = (5, 6, 7)
EOS, PAD = 2, 0


def build_model(name: str, seed: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    kind, kwargs = MODELS[name]
    torch.manual_seed(seed)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**kwargs, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD))
    return GPTNeoXForCausalLM(GPTNeoXConfig(**kwargs, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD))


def mnli_like(n: int, vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    premise = np.clip(rng.lognormal(np.log(22), 0.6, n), 3, 200).astype(int)
    hypothesis = np.clip(rng.lognormal(np.log(12), 0.45, n), 2, 60).astype(int)
    out = []
    for p, h in zip(premise, hypothesis, strict=True):
        prompt = rng.integers(10, vocab, 20 + p + h).tolist()
        target = [LABEL_IDS[prompt[0] % 3], EOS]
        out.append((prompt + target, [IGNORE] * len(prompt) + target))
    return out


def hf_tokenizer(vocab: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(words, unk_token="t1")))
    tok.pad_token, tok.eos_token = f"t{PAD}", f"t{EOS}"
    return tok


def run_ours(
    model, examples, steps: int, lr: float, seed: int, replay: list[list[int]] | None, precision: str = "fp32",
    extra: dict | None = None, losses: list | None = None, stats: dict | None = None,
) -> float:  # fmt: skip
    """Seconds of ``train_loop`` on ``model`` (already on its device); ``extra``: more finetune settings;
    ``losses`` gets the loop's loss of every step; ``stats["loop_s"]`` the loop's own wall time (its setup left out)."""
    cfg = {"epochs": 1, "batch_size": BATCH, "grad_accum": 1, "warmup_ratio": WARMUP_RATIO, "weight_decay": 0.0,
           "max_steps": steps, "save_every": 10**9, "precision": precision,
           "batching": "packed" if replay else "grouped", "max_grad_norm": 1.0, **(extra or {})}  # fmt: skip
    make_batches = train.make_batches
    if replay:
        assert len(replay) == steps and all(len(b) == BATCH for b in replay), "Trainer's batches were not recorded"
        # The loop draws its epoch's micro-batches from make_batches; replay Trainer's instead.
        train.make_batches = lambda *_args: [list(b) for b in replay]
    try:
        t = time.perf_counter()
        result = train_loop(model, examples, cfg, lr, seed, PAD, desc="ours")
        synchronize()
        if losses is not None:
            losses += [r["loss"] for r in result.progress.log]
        if stats is not None:
            stats["loop_s"] = result.progress.wall_time_s
        return time.perf_counter() - t
    finally:
        train.make_batches = make_batches


class RecordingCollator:
    """Trainer's collator, unchanged, noting the indices of the examples of every batch."""

    def __init__(self, collator, examples):
        self.collator = collator
        self.index = {tuple(x): i for i, (x, _) in enumerate(examples)}
        assert len(self.index) == len(examples), "examples must be distinct to be traced"
        self.batches: list[list[int]] = []

    def __call__(self, features):
        self.batches.append([self.index[tuple(f["input_ids"])] for f in features])
        return self.collator(features)


def same_schedule_trainer():
    """``transformers.Trainer`` whose lr follows ptft's schedule, the one hyperparameter where the two
    differ by definition: ``transformers`` runs the first warmup step at lr 0, ptft at ``1/warmup``."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import Trainer

    class SameScheduleTrainer(Trainer):
        def create_scheduler(self, num_training_steps: int, optimizer=None):
            warmup = warmup_steps(num_training_steps, {"warmup_ratio": WARMUP_RATIO})
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer,
                                         lambda step: linear(step, num_training_steps, warmup))  # fmt: skip
            return self.lr_scheduler

    return SameScheduleTrainer


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_hf_trainer(
    model, examples, steps: int, lr: float, seed: int, vocab: int, bf16: bool = False
) -> tuple[float, list[list[int]]]:
    """Seconds of ``Trainer.train`` (it moves the model to the GPU if there is one), and its batches."""
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    SameScheduleTrainer = same_schedule_trainer()

    data = [{"input_ids": x, "labels": y, "attention_mask": [1] * len(x)} for x, y in examples]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, learning_rate=lr,
            weight_decay=0.0, lr_scheduler_type="linear", max_steps=steps,
            max_grad_norm=1.0, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), seed=seed,
            logging_steps=10**9, disable_tqdm=True, dataloader_num_workers=0, bf16=bf16,
        )  # fmt: skip
        collator = RecordingCollator(
            DataCollatorForSeq2Seq(hf_tokenizer(vocab), padding="longest", label_pad_token_id=IGNORE), examples
        )
        trainer = SameScheduleTrainer(model=model, args=args, train_dataset=data, data_collator=collator)
        t = time.perf_counter()
        trainer.train()
        synchronize()
        return time.perf_counter() - t, collator.batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="toy")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (toy), 1e-4 (pythia-160m)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batching", choices=["replay", "grouped"], default="replay", help="see the module docstring")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lr = a.lr or (1e-3 if a.model == "toy" else 1e-4)
    vocab = MODELS[a.model][1]["vocab_size"]
    train_examples = mnli_like(a.steps * BATCH, vocab, a.seed)
    valid = mnli_like(64, vocab, a.seed + 1)
    tokens = sum(len(x) for x, _ in train_examples)
    base = build_model(a.model, a.seed)
    ours_model, hf_model = copy.deepcopy(base), copy.deepcopy(base)

    hf_s, hf_batches = run_hf_trainer(hf_model, train_examples, a.steps, lr, a.seed, vocab)
    ours_s = run_ours(ours_model, train_examples, a.steps, lr, a.seed, hf_batches if a.batching == "replay" else None)
    padded = sum(BATCH * max(len(train_examples[i][0]) for i in b) for b in hf_batches)
    ours_loss = validation_loss(ours_model, valid, "grouped", PAD, BATCH, False, "cpu")
    hf_loss = validation_loss(hf_model, valid, "grouped", PAD, BATCH, False, "cpu")
    result = {
        "model": a.model,
        "parameters": sum(p.numel() for p in base.parameters()),
        "steps": a.steps,
        "examples_per_step": BATCH,
        "tokens": tokens,
        "mean_example_tokens": tokens / len(train_examples),
        "batching": a.batching,
        "trainer_padded_tokens_ratio": padded / tokens,
        "threads": a.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "ours": {"seconds": ours_s, "tokens_per_s": tokens / ours_s, "validation_loss": ours_loss},
        "lr": lr,
        "transformers_trainer": {"seconds": hf_s, "tokens_per_s": tokens / hf_s, "validation_loss": hf_loss},
        # How far apart the two trained models are: replayed batches differ only in rounding.
        "max_abs_weight_diff": max(
            float((a - b).detach().abs().max())
            for a, b in zip(ours_model.parameters(), hf_model.parameters(), strict=True)
        ),  # fmt: skip
        "speedup": hf_s / ours_s,
        "validation_loss_rel_diff": abs(ours_loss - hf_loss) / hf_loss,
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
