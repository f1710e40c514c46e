"""Prompts that begin alike, run from one KV cache of their shared beginning (``evaluate.fewshot: fixed``).

With ``fixed`` few-shot, every prompt of an eval set in one format starts with the same
demonstrations (:func:`ptft.evaluate.scoring.build_prompts`): hundreds to thousands of tokens
that a model would otherwise run again for every item. Their keys and values are computed once,
at batch size 1, and each batch runs only its items' own tokens on top of a copy expanded to its
rows. Attention and positions are those of the whole prompt, so the scores are the ones of the
whole prompts, up to the rounding of another summation order.

The prefix is found from the encoded prompts, not from the text: prompts are grouped by their
first :data:`MIN_SHARED` tokens and each group runs from its members' longest common token
prefix. So a prompt cut to the window (its oldest demonstrations dropped) joins the prompts cut
the same way, and a tokenizer that merges the last demonstration's separator into the query
changes nothing. Prompts that share fewer than :data:`MIN_SHARED` tokens run whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ptft.evaluate.batching import length_sorted_batches
from ptft.evaluate.forward import keeps_logits

# Fewer shared tokens than this are run with each prompt: the copy would cost about what it saves.
MIN_SHARED = 32


def shares_prefix(cfg: dict) -> bool:
    """Whether scoring looks for shared beginnings: with ``evaluate.fewshot: fixed``, where prompts have them."""
    return cfg.get("fewshot", "per_item") == "fixed"


def common_length(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence of ``seqs`` has in common."""
    first, n = seqs[0], min(map(len, seqs))
    for seq in seqs[1:]:
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
    return n


def shared_prefix_groups(encoded: Sequence[Sequence[int]], min_shared: int = MIN_SHARED) -> list[tuple[int, list[int]]]:
    """(shared prefix length, indices) of each group of prompts; a length of 0 means "run whole".

    Every member keeps at least its last token outside the prefix: the logits after a prompt are
    computed from its last token.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    alone = []
    for i, seq in enumerate(encoded):
        if len(seq) <= min_shared:
            alone.append(i)
        else:
            groups.setdefault(tuple(seq[:min_shared]), []).append(i)
    out = []
    for members in groups.values():
        seqs = [encoded[i] for i in members]
        shared = min(common_length(seqs), min(map(len, seqs)) - 1) if len(members) > 1 else 0
        out.append((shared if shared >= min_shared else 0, members))
    if alone:
        out.append((0, alone))
    return out


def prefix_batches(model, encoded: Sequence[Sequence[int]], batch_size: int, shared_prefix: bool
                   ) -> Iterator[tuple[int, object, list[int]]]:  # fmt: skip
    """(shared prefix length, its KV cache or None, indices) of each batch a scorer runs.

    Without ``shared_prefix`` the batches are :func:`length_sorted_batches` of the whole prompts (0,
    None). With it, each group of :func:`shared_prefix_groups` computes its prefix's cache once and
    its members are batched by length among themselves.
    """
    groups = shared_prefix_groups(encoded) if shared_prefix else [(0, list(range(len(encoded))))]
    for shared, members in groups:
        cache = prefix_cache(model, encoded[members[0]][:shared]) if shared else None
        for batch in length_sorted_batches([len(encoded[i]) for i in members], batch_size):
            yield shared, cache, [members[i] for i in batch]


def prefix_cache(model, prefix: Sequence[int]):
    """The KV cache of ``prefix`` at batch size 1 (a ``DynamicCache``)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=model.device)
    keep = {"logits_to_keep": 1} if keeps_logits(model) else {}  # only the cache is wanted
    model(input_ids=ids, past_key_values=cache, use_cache=True, **keep)
    return cache


def expanded(model, cache, rows: int):
    """A new ``DynamicCache`` holding ``cache``'s keys and values for each of ``rows`` rows (``cache`` is kept)."""
    from transformers import DynamicCache

    out = DynamicCache(config=model.config)
    for index, layer in enumerate(cache.layers):
        out.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), index)
    return out
