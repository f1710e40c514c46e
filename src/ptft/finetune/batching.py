"""Training examples as token ids, and batches that spend no compute on padding.

An example is ``(input_ids, labels)``: labels equal the ids on trained tokens (the completion,
or the assistant turns of a chat) and :data:`IGNORE` elsewhere, so the loss is on completion
tokens only.

Two ways to batch a micro-batch of examples:

- ``packed`` (padding-free): the examples are concatenated into one row whose ``position_ids``
  restart at 0 for each example and no attention mask is passed. ``transformers`` then builds a
  block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``), so no example
  attends to another and not one token of padding is computed.
- ``grouped``: examples of similar length share a micro-batch (shuffle, sort within chunks of
  50 micro-batches, shuffle the micro-batches) and are right-padded to the longest.

Either way a micro-batch holds the same number of examples, so an optimizer step sees
``batch_size * grad_accum`` examples whatever the batching.

A preference method (DPO) trains on :class:`Pair` s instead: a prompt with its chosen and
rejected responses, each an ``(input_ids, labels)`` sequence. A micro-batch of B pairs is
collated as 2B sequences, the B chosen ones first, by either batching; ``n_pairs`` tells the
loop to normalise the step's loss per pair instead of per target token (:func:`step_weight`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ptft.data.prompts import chat_segments, completion, join_prompt_completion, render_prompt

IGNORE = -100


def template_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, trained on) pieces of a chat rendered with the tokenizer's own chat template.

    Each assistant turn is the text the template adds between the prompt for that turn
    (``add_generation_prompt=True``) and the transcript including it, so whatever end-of-turn
    marker the template writes is trained on too.
    """
    pieces, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("chat template: a transcript does not extend its prefix; cannot mask the prompt turns")
        pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return pieces


def segments(task, record: dict, fmt: str, tokenizer=None) -> tuple[list[tuple[str, bool]], bool]:
    """(text, trained on) pieces of one example, and whether EOS follows each trained piece.

    A chat uses the tokenizer's chat template when it has one (its turns carry their own end
    markers); otherwise the Tulu v2 template of :func:`ptft.data.prompts.chat_segments`, with EOS
    after every assistant reply, as Open-Instruct trains Tulu.
    """
    if task.kind == "chat":
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return template_segments(tokenizer, list(record["messages"])), False
        return chat_segments(record["messages"]), True
    if task.kind == "text":  # a plain document: every token is trained on
        return [(record[task.target], True)], True
    prompt, target = join_prompt_completion(render_prompt(task, record, fmt), completion(task, record))
    return [(prompt, False), (target, True)], True


def encode_examples(tokenizer, task, records, fmt: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record, cut to ``max_length`` tokens."""
    out = []
    for r in records:
        pieces, add_eos = segments(task, r, fmt, tokenizer)
        ids, labels = [], []
        for text, trained in pieces:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            if trained and add_eos:
                piece = piece + [tokenizer.eos_token_id]
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        out.append((ids[:max_length], labels[:max_length]))
    return out


def _cut_prompt(ids: list[int], limit: int | None, keep: str) -> list[int]:
    if limit is None or len(ids) <= limit:
        return ids
    return ids[len(ids) - limit :] if keep == "end" else ids[:limit]


def encode_responses(tokenizer, task, records, fmt: str, max_length: int, max_prompt_length: int | None,
                     prompt_keep: str, fields: tuple[str, ...] = ("chosen",)) -> list[dict[str, tuple]]:  # fmt: skip
    """Per preference record, ``{field: (input_ids, labels)}`` of its prompt followed by each response in ``fields``.

    The length rules of Ren & Sutherland's release: the prompt is cut to ``max_prompt_length``
    tokens, keeping its end (``prompt_keep="end"``, Anthropic-HH: the last turn matters) or its start
    (UltraFeedback), then the sequence to ``max_length`` by cutting the response. EOS follows each
    response and is trained on. The same prompt tokens precede every response of a record.
    """
    out = []
    for r in records:
        prompt = render_prompt(task, r, fmt)
        sequences = {}
        for name in fields:
            head, response = join_prompt_completion(prompt, r[name])
            p = _cut_prompt(tokenizer(head, add_special_tokens=False)["input_ids"], max_prompt_length, prompt_keep)
            y = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (p + y)[:max_length]
            sequences[name] = (ids, ([IGNORE] * len(p) + y)[:max_length])
        out.append(sequences)
    return out


@dataclass
class Pair:
    """A preference example: ``(input_ids, labels)`` of the chosen and of the rejected response.

    ``reference``: the reference model's summed log-probabilities of (chosen, rejected), when
    they were computed once before training (DPO's ``reference: cached``).
    """

    chosen: tuple[list[int], list[int]]
    rejected: tuple[list[int], list[int]]
    reference: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.chosen[0]) + len(self.rejected[0])


def example_length(example) -> int:
    """Tokens of an example (both sequences of a :class:`Pair`)."""
    return len(example) if isinstance(example, Pair) else len(example[0])


def sequences(examples) -> list[tuple[list[int], list[int]]]:
    """The examples as sequences: the chosen of every pair, then the rejected ones; other examples as they are."""
    if examples and isinstance(examples[0], Pair):
        return [p.chosen for p in examples] + [p.rejected for p in examples]
    return list(examples)


def step_weight(batch: dict) -> int:
    """What a micro-batch's summed loss is divided by, summed over the step: pairs, else target tokens."""
    if "n_pairs" in batch:
        return batch["n_pairs"]
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def has_target(labels: list[int]) -> bool:
    """Whether an example has a token to predict: a label after its first position.

    The first position is never a target (labels are shifted by one, and a packed row ignores
    each example's first label), so an example whose completion ``max_length`` cut away, or
    whose only trained token comes first, has none.
    """
    return any(label != IGNORE for label in labels[1:])


def with_targets(examples: list[tuple[list[int], list[int]]]) -> tuple[list[tuple[list[int], list[int]]], int]:
    """The examples that have a target, and how many were left out.

    Training on an example without one adds nothing to the loss but its tokens to the step, and
    a micro-batch of such examples would divide the step's loss by zero target tokens.
    """
    kept = [e for e in examples if all(has_target(labels) for _, labels in sequences([e]))]
    return kept, len(examples) - len(kept)


def make_batches(lengths: list[int], batch_size: int, rng: random.Random, grouped: bool) -> list[list[int]]:
    """One epoch of micro-batches (lists of example indices), shuffled by ``rng``."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not grouped:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def to_device(batch: dict, device) -> dict:
    """The batch's tensors on ``device`` (its counts as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def collate_padded(examples, pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
    """Right-padded rows; no attention mask when no row is padded (SDPA's causal fast path)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    batch = {"input_ids": ids, "labels": labels}
    if not bool(mask.all()):
        batch["attention_mask"] = mask
    return to_device(batch, device)


def collate_packed(examples, device="cpu") -> dict:
    """One row of concatenated examples; ``position_ids`` restart at each example's start.

    ``cu_seq_lens_*`` / ``max_length_*`` (the examples' boundaries) are what variable-length
    attention kernels take (``flash_attention_2``, :mod:`ptft.finetune.packed_attention`);
    other attention implementations ignore them and mask by ``position_ids``.
    """
    ids, labels, positions = [], [], []
    for x, y in examples:
        ids += x
        # The first token of an example would be predicted from the previous example's last one.
        labels += [IGNORE, *y[1:]]
        positions += range(len(x))
    lengths = [len(x) for x, _ in examples]
    bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    batch = {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
    }
    return to_device(batch, device) | {"max_length_q": max(lengths), "max_length_k": max(lengths)}


def collate(examples, batching: str, pad_id: int, device="cpu") -> dict:
    """A micro-batch; of :class:`Pair` s, their 2B sequences (chosen first) with ``n_pairs`` and cached references."""
    rows = sequences(examples)
    batch = collate_packed(rows, device) if batching == "packed" else collate_padded(rows, pad_id, device)
    if examples and isinstance(examples[0], Pair):
        batch["n_pairs"] = len(examples)
        if all(p.reference is not None for p in examples):
            batch["reference"] = torch.tensor([p.reference for p in examples], dtype=torch.float64, device=device)
    return batch
