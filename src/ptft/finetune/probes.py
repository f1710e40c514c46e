"""Learning-dynamics probes (Ren & Sutherland 2025): log-probabilities of fixed responses during training.

A probe set is a table of (example, prompt, response_type, response). Before the first
optimizer step (at step 0), every ``every`` steps and after the last, the run computes, for each
row, the summed log-probability of the response tokens given the prompt and appends
(step, example, response_type, logp, n_tokens) to ``probes.parquet`` (:class:`Prober`).

A study gives its own probe set (``finetune.probes.path``: Parquet or JSONL with those four
columns, e.g. derived rephrases), or uses the built-in one drawn from the first ``examples``
training records:

- ``gold``: the record's own completion;
- ``other_label``: the next label in the task's label list (classification);
- ``other_response``: the completion of the next probe record, a response of another prompt;
- ``shuffled_gold``: the gold completion's words in a seeded random order (generation).

Ren & Sutherland's own probe sets (chosen, rejected, their rewrites, irrelevant and random
responses, ...) are built by ``ptft build-probes`` (:mod:`ptft.probes`). Their scoring options:
``eos`` scores the tokenizer's EOS after every response too (the paper's sums include it), and
``argmax_of`` names a response type (``chosen``) whose rows also give an ``argmax`` row: at each
of its teacher-forced target positions the log-probability of the model's most likely token,
summed (the paper's y*), computed in the same forward pass. Rows are keyed by
(example, response_type) names, never by their position in the probe set.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pandas as pd
import torch

from ptft.data.prompts import completion, join_prompt_completion, render_prompt
from ptft.finetune.batching import IGNORE, collate_padded
from ptft.finetune.loss import target_logits
from ptft.finetune.methods import unwrap
from ptft.probes import ARGMAX, PROBE_SET_COLUMNS

PROBE_COLUMNS = ("step", "example", "response_type", "logp", "n_tokens")

log = logging.getLogger(__name__)


def builtin_probe_set(task, records: list[dict], fmt: str, n: int, seed: int) -> pd.DataFrame:
    if task.kind not in ("classification", "generation"):
        raise ValueError(f"finetune.probes: no built-in probe set for {task.kind} task {task.name!r}; give probes.path")
    records = records[:n]
    rng = random.Random(f"probes:{seed}")
    rows = []
    for i, r in enumerate(records):
        prompt = render_prompt(task, r, fmt)
        gold = completion(task, r)
        responses = {"gold": gold, "other_response": completion(task, records[(i + 1) % len(records)])}
        if task.kind == "classification":
            responses["other_label"] = task.labels[(int(r["label"]) + 1) % len(task.labels)]
        else:
            words = gold.split()
            rng.shuffle(words)
            responses["shuffled_gold"] = " ".join(words)
        rows += [{"example": i, "prompt": prompt, "response_type": k, "response": v} for k, v in responses.items()]
    return pd.DataFrame(rows, columns=list(PROBE_SET_COLUMNS))


def read_probe_set(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        from ptft.data.prepare import bad_lines

        bad = bad_lines(path, parse=path.suffix == ".jsonl")
        if bad:  # pandas' own error names neither the file nor the line
            raise ValueError(f"finetune.probes.path {path} line {bad[0][0]}: {bad[0][1]} ({len(bad)} bad lines in "
                             "all); fix the file, e.g. re-export it as UTF-8 JSON lines")  # fmt: skip
    df = pd.read_json(path, lines=True) if path.suffix in (".jsonl", ".json") else pd.read_parquet(path)
    missing = [c for c in PROBE_SET_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"finetune.probes.path {path}: missing column(s) {missing}; need {list(PROBE_SET_COLUMNS)}")
    return df[list(PROBE_SET_COLUMNS)]


def encode_probes(
    tokenizer, probes: pd.DataFrame, max_length: int | None = None, eos: bool = False
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per probe row: only the response's tokens are scored, and with ``eos`` the
    tokenizer's EOS after them (as training on a preference pair scores it).

    A row longer than ``max_length`` (the model's context window) loses prompt tokens from its
    start, as evaluation prompts do; a response longer than the window on its own is cut at its
    end (its EOS first), which the row's ``n_tokens`` shows.
    """
    if eos and tokenizer.eos_token_id is None:
        raise ValueError("finetune.probes: eos asked, but the tokenizer has no EOS token")
    out, cut = [], 0
    for prompt, response in zip(probes["prompt"], probes["response"], strict=True):
        prompt, response = join_prompt_completion(prompt, response)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
        if max_length is not None and len(p) + len(r) > max_length:
            cut += 1
            r = r[: max_length - 1]  # at least one prompt token predicts the response's first
            p = p[len(p) - (max_length - len(r)) :]
        out.append((p + r, [IGNORE] * len(p) + r))
    if cut:
        log.warning("%d of %d probe rows are longer than the context window (%d tokens); their prompts are cut "
                    "from the start", cut, len(out), max_length)  # fmt: skip
    return out


@torch.no_grad()
def response_logps(model, encoded, batch_size: int, device, argmax: bool = False) -> list[tuple]:
    """(summed log-probability, token count) of each encoded response; with ``argmax``,
    (summed log-probability, token count, summed argmax log-probability): at each target position,
    the log-probability of the most likely token there, from the same forward pass.

    Length-sorted, right-padded batches (padding carries no target), the head only on
    response tokens (:func:`ptft.finetune.loss.target_logits`): on CPU this is several times
    faster than packed rows.
    """
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out: list[tuple] = [(0.0, 0, 0.0) if argmax else (0.0, 0)] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits, target, keep = target_logits(model, collate_padded([encoded[i] for i in idx], 0, device), fast=True)
        logps = torch.log_softmax(logits, -1)
        rows = keep.nonzero()[:, 0]
        sums = torch.zeros(len(idx), device=device).index_add_(0, rows, logps.gather(1, target[:, None])[:, 0])
        counts = keep.sum(1)
        if argmax:
            best = torch.zeros(len(idx), device=device).index_add_(0, rows, logps.max(-1).values)
        for k, i in enumerate(idx):
            out[i] = (float(sums[k]), int(counts[k]), float(best[k])) if argmax else (float(sums[k]), int(counts[k]))
    return out


# Response rows a batch of the probe forward, padded or after their shared prompts: the batch's
# logits and KV cache copies grow with it (for Pythia-410M, about 50 MB of fp32 cache a row of a
# 256-token prompt, and 200 kB of logits a scored token).
ROWS_PER_BATCH = 64
# After shared prompts the rows are responses only, short, so more of them make a batch: in fp32 the
# probe is bound by its matmuls, and 64 short rows fill an H100 poorly. At Pythia-410M's shape on one
# H100, 256 rows took 0.84 of 64's time at 6.9 GiB peak (4.0 at 64; the padded rows' 8.0); 512, 0.81
# at 9.7 GiB. On a CPU thread, 0.88 (docs/learning-dynamics.md).
SHARED_ROWS_PER_BATCH = 256


@torch.no_grad()
def shared_prompt_logps(model, encoded, max_rows: int, argmax: bool = False) -> list[tuple]:
    """:func:`response_logps`, each distinct prompt run once for all its responses.

    A probe set asks for every response type after the same prompt (12 of them in the paper's),
    so rows that share their prompt tokens run the prompt once and their responses on its KV
    cache (:func:`ptft.evaluate.multiple_choice.shared_context_loglikelihoods`): longest prompts
    first, as many a batch as keep its responses within ``max_rows`` (one prompt at least). The
    toy study's 96 prompts with their 1,152 responses took 0.57 of the padded rows' time on a CPU
    (docs/learning-dynamics.md).
    """
    from ptft.evaluate.forward import keeps_logits
    from ptft.evaluate.multiple_choice import shared_context_loglikelihoods

    groups: dict[tuple, list[int]] = {}  # prompt tokens -> the rows after them
    alone = []  # rows without a prompt token or a response token: padded rows score them as before
    for i, (ids, labels) in enumerate(encoded):
        n = next((k for k, label in enumerate(labels) if label != IGNORE), len(labels))
        (groups.setdefault(tuple(ids[:n]), []) if 0 < n < len(ids) else alone).append(i)
    out: list[tuple] = [()] * len(encoded)
    device = next(model.parameters()).device
    plain = response_logps(model, [encoded[i] for i in alone], max_rows, device, argmax)
    for i, row in zip(alone, plain, strict=True):
        out[i] = row
    items = sorted(groups.items(), key=lambda kv: -len(kv[0]))
    inner = unwrap(model)  # a LoRA model's own forward, which can keep the prompt's last logits only
    keep_ok = keeps_logits(inner)
    pad_id = 0  # padding is masked, and left-padded prompts' positions count real tokens only
    for chunk in prompt_batches(items, max_rows):
        batch = [(list(prompt), [encoded[i][0][len(prompt) :] for i in rows]) for prompt, rows in chunk]
        sums, best = shared_context_loglikelihoods(inner, batch, pad_id, keep_ok, best=True)
        rows = [i for _, item_rows in chunk for i in item_rows]
        responses = [r for _, item_responses in batch for r in item_responses]
        for i, r, lp, b in zip(rows, responses, sums.tolist(), best.tolist(), strict=True):
            out[i] = (lp, len(r), b) if argmax else (lp, len(r))
    return out


def prompt_batches(items: list[tuple], max_rows: int):
    """Consecutive runs of (prompt, rows) items whose rows add up to at most ``max_rows`` (an item with
    more rows makes a batch of its own)."""
    batch, rows = [], 0
    for item in items:
        if batch and rows + len(item[1]) > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(item)
        rows += len(item[1])
    if batch:
        yield batch


def probe_rows(step: int, probes: pd.DataFrame, logps: list[tuple[float, int]]) -> list[dict]:
    return [
        {"step": step, "example": int(e), "response_type": t, "logp": lp, "n_tokens": n}
        for e, t, (lp, n) in zip(probes["example"], probes["response_type"], logps, strict=True)
    ]


class Prober:
    """A probe set, encoded once, and the steps it is probed at.

    ``eos``: score the tokenizer's EOS after every response too. ``argmax_of``: a response type
    (e.g. ``chosen``) whose every row also gives a row of type ``argmax`` (:data:`ARGMAX`): the
    summed log-probability of the most likely token at each of that row's target positions,
    with the same ``n_tokens``. ``shared_prompts``: score with :func:`shared_prompt_logps`, for a causal LM
    that trains eagerly on one device; padded rows otherwise (a sharded model's forward is its own, and
    the KV cache of the shared path is not measured through compiled blocks).
    """

    def __init__(self, tokenizer, probe_set: pd.DataFrame, every: int, max_length: int | None = None, *,
                 eos: bool = False, argmax_of: str | None = None, shared_prompts: bool = True):  # fmt: skip
        check_probe_set(probe_set, argmax_of)
        self.probe_set, self.every, self.argmax_of, self.shared = probe_set, every, argmax_of, shared_prompts
        self.encoded = encode_probes(tokenizer, probe_set, max_length, eos=eos)

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every == 0 or step == total_steps

    def rows(self, model, step: int) -> list[dict]:
        """The probe rows of ``model`` at ``step``; the model is left in training mode."""
        model.eval()
        device = next(model.parameters()).device
        argmax = self.argmax_of is not None
        if self.shared:
            logps = shared_prompt_logps(model, self.encoded, SHARED_ROWS_PER_BATCH, argmax)
        else:
            logps = response_logps(model, self.encoded, ROWS_PER_BATCH, device, argmax)
        model.train()
        rows = probe_rows(step, self.probe_set, [x[:2] for x in logps])
        if argmax:
            of = (self.probe_set["response_type"] == self.argmax_of).to_numpy()
            rows += [{"step": step, "example": int(e), "response_type": ARGMAX, "logp": x[2], "n_tokens": x[1]}
                     for e, x, keep in zip(self.probe_set["example"], logps, of, strict=True) if keep]  # fmt: skip
        return rows


def check_probe_set(probe_set: pd.DataFrame, argmax_of: str | None = None) -> None:
    """Each (example, response_type) once: the rows are stored and read back by those names."""
    dup = probe_set[probe_set.duplicated(["example", "response_type"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        raise ValueError(f"probe set: {len(dup)} rows share an (example, response_type), e.g. "
                         f"({first['example']}, {first['response_type']!r}); each must be named once")  # fmt: skip
    if argmax_of is not None:
        types = set(probe_set["response_type"])
        if ARGMAX in types:
            raise ValueError(f"probe set: response type {ARGMAX!r} is computed by the prober (argmax_of); "
                             "the probe set may not hold it")  # fmt: skip
        if argmax_of not in types:
            raise ValueError(f"probe set: argmax_of={argmax_of!r} is none of its response types {sorted(types)}")
