"""TokenProb classification (Amuro & Char, docs/studies.md §1).

At the last prompt position the next-token distribution is restricted to the token ids of
the acceptable label strings, and the label owning the most probable of those ids wins.

Definition used here, exactly:
- a label's token set is every token id in the tokenization of ``label`` and of
  ``" " + label`` (every sub-token, as the paper's lenient matching);
- a label's score is the largest log-probability (log-softmax over the whole vocabulary)
  among its token ids;
- the prediction is the label with the largest score; ties go to the earlier label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ptft.evaluate.batching import context_limit, progress, right_pad, to_device
from ptft.evaluate.encoding import encode_prompts, fit_to_window
from ptft.evaluate.forward import forward, keeps_logits
from ptft.evaluate.prefix import expanded, prefix_batches


def label_token_sets(tokenizer, labels: Sequence[str]) -> list[list[int]]:
    sets = []
    for label in labels:
        ids: set[int] = set()
        for variant in (label, " " + label):
            ids.update(tokenizer(variant, add_special_tokens=False)["input_ids"])
        sets.append(sorted(ids))
    return sets


@torch.no_grad()
def score_token_prob(
    model,
    tokenizer,
    prompts: Sequence[str],
    labels: Sequence[str],
    batch_size: int,
    add_bos: str | bool = "auto",
    return_truncated: bool = False,
    shared_prefix: bool = False,
):
    """Return (predicted label index per prompt, label log-probabilities [n_prompts, n_labels]).

    Prompts are encoded by :func:`ptft.evaluate.encoding.encode_prompts` and cut to the window by
    :func:`ptft.evaluate.encoding.fit_to_window`; with ``return_truncated`` the tokens each lost
    come third. With ``shared_prefix`` (``evaluate.fewshot: fixed``), prompts that begin alike run
    from one KV cache of their beginning (:mod:`ptft.evaluate.prefix`).
    """
    sets = label_token_sets(tokenizer, labels)
    prompts = list(prompts)
    encoded, cut = fit_to_window(
        tokenizer, prompts, encode_prompts(tokenizer, prompts, add_bos), context_limit(model), add_bos
    )
    scores = np.zeros((len(prompts), len(labels)), dtype=np.float64)
    done, per_batch = [], []  # read back once at the end: the GPU runs a batch while the next one is built
    with progress(len(prompts), "TokenProb") as bar:
        for shared, cache, batch in prefix_batches(model, encoded, batch_size, shared_prefix):
            past = expanded(model, cache, len(batch)) if cache is not None else None
            logits = last_logits(model, [encoded[i][shared:] for i in batch], tokenizer.pad_token_id, past).float()
            logp = torch.log_softmax(logits, dim=-1)
            per_batch.append(torch.stack([logp[:, ids].max(dim=-1).values for ids in sets], dim=-1).double())
            done += batch
            bar.update(len(batch))
    if done:
        scores[done] = torch.cat(per_batch).cpu().numpy()
    if return_truncated:
        return scores.argmax(axis=1), scores, cut
    return scores.argmax(axis=1), scores


def last_logits(model, seqs: Sequence[Sequence[int]], pad_id: int | None, past=None) -> torch.Tensor:
    """The next-token logits after each sequence (rows × vocabulary); ``past``: a cache of the
    tokens before every row (:func:`ptft.evaluate.prefix.expanded`), or None.

    The rows are right-padded and no attention mask is passed: causal attention keeps every real
    token from the padding after it, and without a mask the attention runs its fused causal kernel.
    The vocabulary projection runs at the rows' last positions only (``logits_to_keep`` takes the
    positions, shared by the rows; at most one per row).
    """
    ids, mask = right_pad(seqs, pad_id if pad_id is not None else 0)
    device = model.device
    last = mask.sum(-1) - 1
    rows = to_device(torch.arange(len(seqs)), device)
    # A cache is passed only where there is one: a model given past_key_values=None still builds one.
    cached = {"past_key_values": past, "use_cache": True} if past is not None else {}
    if not keeps_logits(model):
        return model(input_ids=to_device(ids, device), **cached).logits[rows, to_device(last, device)]
    keep = torch.unique(last)  # sorted; on the CPU, where finding it does not wait for the GPU
    # A forward from a prefix's cache runs eagerly: compiled, dynamo specialised on the cache's length
    # and recompiled for every group (a minute each on one H200).
    run = forward(model) if past is None else model
    logits = run(input_ids=to_device(ids, device), logits_to_keep=to_device(keep, device), **cached).logits
    return logits[rows, to_device(torch.searchsorted(keep, last), device)]
