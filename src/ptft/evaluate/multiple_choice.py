"""Multiple-choice scoring by continuation log-likelihood, as lm-evaluation-harness defines it.

The definitions below are those of EleutherAI lm-evaluation-harness for tasks with
``output_type: multiple_choice`` (``lm_eval/api/task.py``: ``construct_requests`` and
``process_results``; ``lm_eval/models/huggingface.py``: ``loglikelihood``, ``_encode_pair`` and
``_loglikelihood_tokens``), exactly:

Requests
    An item has a context string, a list of choice strings and a gold index. Choice ``c`` becomes
    the request ``(context, delimiter + c)``; the delimiter is the task's ``target_delimiter``,
    ``" "`` by default.

Encoding (``_encode_pair``)
    Trailing whitespace of the context is moved to the start of the continuation. Then
    ``whole = encode(context + continuation)``, ``context_enc = encode(context)`` and
    ``continuation_enc = whole[len(context_enc):]``. The continuation's tokens are therefore those
    of the joint encoding, even where the tokenizer merges across the boundary. Every ``encode``
    here is ``add_special_tokens=False`` with a BOS token put in front of the context (and so of the
    whole) where ``evaluate.add_bos`` says so (:mod:`ptft.evaluate.encoding`; by default where the
    tokenizer adds one, as lm-eval 0.4.13's HF model does unless ``add_bos_token`` is set). An empty
    context is conditioned on lm-eval's ``prefix_token_id``: the BOS token when the tokenizer has
    one, else EOS; if the continuation (encoded without special tokens) starts with that token, its
    first token is the context instead. With ``add_bos: false`` an empty context is the single EOS
    token and the continuation is encoded on its own. A request whose continuation encodes to no
    tokens is an error, as in lm-eval.

Log-likelihood (``_loglikelihood_tokens``)
    The model reads ``(context_enc + continuation_enc)[-(max_length + 1):][:-1]``, i.e. the context
    is truncated from the left so that the input fits ``max_length`` while the continuation stays
    whole; a BOS token and the start of the query can be cut with it, as in lm-eval (a continuation
    longer than ``max_length`` is an error). The log-likelihood is the sum, over the continuation
    tokens, of the log-softmax probability of each token given everything
    before it. ``max_length`` is the model config's ``n_positions``, ``max_position_embeddings`` or
    ``n_ctx`` (first present), else the tokenizer's ``model_max_length`` unless unset, else 2048.
    How it is computed differs from lm-eval: an item's context runs once, and its choices are
    packed after it in the same row under a mask that lets each choice see the context and itself
    only (:func:`_packed_loglikelihoods`, on a GPU; on a CPU, or with an attention implementation
    that takes no 4D mask, the choices continue from the context's KV cache instead); a request-by-request path,
    right-padded, serves items that the window truncates. Both give lm-eval's values up to float32
    rounding. Unlike lm-eval, the log-softmax is taken in float32 even for bf16/fp16 models, so
    low-precision runs can differ from lm-eval at the rounding level.

Metrics (``process_results``)
    ``acc`` is 1 when ``argmax_i ll_i`` is the gold index; ``acc_norm`` is 1 when
    ``argmax_i ll_i / len(choice_i)`` is, with ``len`` the number of characters of the choice string
    without the delimiter (lm-eval's ``completion_len``). Ties go to the first index (``np.argmax``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial
from itertools import chain

import numpy as np
import torch

from ptft.evaluate import causal_attention
from ptft.evaluate.batching import left_pad, length_sorted_batches, model_max_length, progress, right_pad, to_device
from ptft.evaluate.encoding import bos_prefix_length, empty_context_split, encode_prompts, encode_texts
from ptft.evaluate.forward import forward, keeps_logits


def _split_trailing_whitespace(context: str, continuation: str) -> tuple[str, str]:
    # BPE tokenizers attach a space to the following word, so a space left on the context would
    # become a lone token there and the continuation's first word would lose its usual form.
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def encode_requests(
    tokenizer, requests: Sequence[tuple[str, str]], add_bos: str | bool = "auto"
) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) per request, by lm-eval's rule (module docstring)."""
    pairs = [_split_trailing_whitespace(ctx, cont) if ctx else (ctx, cont) for ctx, cont in requests]
    # One batched call per kind of string: the fast tokenizer then works in parallel.
    joint = [i for i, (ctx, _) in enumerate(pairs) if ctx]
    alone = [i for i, (ctx, _) in enumerate(pairs) if not ctx]
    wholes = encode_texts(tokenizer, [pairs[i][0] + pairs[i][1] for i in joint])
    # The choices of an item share their context string: encode each distinct one once.
    unique = list(dict.fromkeys(pairs[i][0] for i in joint))
    # A BOS goes in front of both the context and the whole, so the split point moves with it.
    by_context = dict(zip(unique, encode_prompts(tokenizer, unique, add_bos), strict=True))
    bos = dict(zip(unique, bos_prefix_length(tokenizer, unique, add_bos), strict=True))
    contexts = [by_context[pairs[i][0]] for i in joint]
    conts_alone = encode_texts(tokenizer, [pairs[i][1] for i in alone])

    encoded: list[tuple[list[int], list[int]]] = [([], [])] * len(pairs)
    for i, whole, ctx in zip(joint, wholes, contexts, strict=True):
        encoded[i] = (list(ctx), list(whole[len(ctx) - bos[pairs[i][0]] :]))
    for i, cont in zip(alone, conts_alone, strict=True):
        encoded[i] = empty_context_split(tokenizer, cont, add_bos)
    for (ctx, cont), (_, cont_ids) in zip(requests, encoded, strict=True):
        if not cont_ids:
            raise ValueError(f"continuation encodes to no tokens: {(ctx, cont)!r}")
    return encoded


def _model_window(context_ids: list[int], continuation_ids: list[int], max_length: int) -> list[int]:
    """Model input: the last max_length+1 tokens minus the final one (it is only ever a target)."""
    if len(continuation_ids) > max_length:
        raise ValueError(f"continuation of {len(continuation_ids)} tokens exceeds max length {max_length}")
    return (context_ids + continuation_ids)[-(max_length + 1) :][:-1]


def _batch_loglikelihoods(model, windows: list[list[int]], conts: list[list[int]], pad_id: int, keep_ok: bool):
    """Summed continuation log-probabilities (float64, CPU) of one right-padded batch."""
    ids, mask = right_pad(windows, pad_id)
    width = ids.shape[1]
    # Continuation token j of a row sits at input position len(window) - len(cont) + j; its
    # prediction is read one position earlier, i.e. positions [len - k, len) predict the k tokens.
    starts = [len(w) - len(c) for w, c in zip(windows, conts, strict=True)]
    kwargs = {"use_cache": False}
    offset = 0
    if keep_ok:
        # The vocabulary projection is the costliest part for small models with big vocabularies;
        # skip it for positions that only ever precede context tokens.
        offset = min(starts)
        kwargs["logits_to_keep"] = width - offset
    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs).logits

    return _summed_logprobs(logits, [s - offset for s in starts], conts).cpu().numpy()


def _summed_logprobs(logits: torch.Tensor, starts: list[int], targets: list[list[int]], best: bool = False):
    """Per row r, the float64 sum over j of ``log_softmax(logits[r, starts[r] + j])[targets[r][j]]``; with
    ``best``, (those sums, the sums of the same positions' largest log-probabilities)."""
    lens = torch.tensor([len(t) for t in targets])
    rows = torch.repeat_interleave(torch.arange(len(targets)), lens)
    first = torch.cumsum(lens, 0) - lens  # flat index of each row's first target
    within = torch.arange(len(rows)) - torch.repeat_interleave(first, lens)
    positions = torch.repeat_interleave(torch.tensor(starts, dtype=torch.long), lens) + within
    flat = torch.tensor(list(chain.from_iterable(targets)), dtype=torch.long, device=logits.device)
    picked = logits[rows.to(logits.device), positions.to(logits.device)].float()
    logps = torch.log_softmax(picked, dim=-1)
    rows = rows.to(logits.device)
    sums = torch.zeros(len(targets), dtype=torch.float64, device=logits.device)
    sums.index_add_(0, rows, logps.gather(-1, flat[:, None])[:, 0].double())
    if not best:
        return sums
    return sums, torch.zeros_like(sums).index_add_(0, rows, logps.max(-1).values.double())


def continuation_loglikelihoods(
    model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int, add_bos: str | bool = "auto"
) -> np.ndarray:
    """Summed log-likelihood of each request's continuation given its context (float64, request order)."""
    return encoded_loglikelihoods(model, tokenizer, encode_requests(tokenizer, requests, add_bos), batch_size)


@torch.no_grad()
def encoded_loglikelihoods(
    model, tokenizer, encoded: Sequence[tuple[list[int], list[int]]], batch_size: int
) -> np.ndarray:
    """:func:`continuation_loglikelihoods` of requests already encoded by :func:`encode_requests`, for a caller
    that needs the tokens too (their count, their truncation) without encoding every request twice."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    max_length = model_max_length(model, tokenizer)
    windows = [_model_window(ctx, cont, max_length) for ctx, cont in encoded]
    conts = [cont for _, cont in encoded]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep_ok = keeps_logits(model)

    out = np.zeros(len(encoded), dtype=np.float64)
    with progress(len(encoded), "log-likelihood") as bar:
        for batch in length_sorted_batches([len(w) for w in windows], batch_size):
            out[batch] = _batch_loglikelihoods(
                model, [windows[i] for i in batch], [conts[i] for i in batch], pad_id, keep_ok
            )
            bar.update(len(batch))
    return out


# A forward call costs about as much as this many extra padded positions (launch and Python
# overhead); it only sets where tail groups split, never a score.
_CALL_COST_POSITIONS = 256


def _length_groups(lengths: Sequence[int], call_cost: int = _CALL_COST_POSITIONS) -> list[list[int]]:
    """Indices grouped for right-padded batches: sorted longest first, split where it pays.

    Minimises, over contiguous groups of the sorted lengths, the padded positions (rows times the
    group's longest) plus ``call_cost`` per group, by dynamic programming over the split points.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    longest = np.array([lengths[i] for i in order], dtype=np.float64)
    best = np.zeros(n + 1)  # best[k]: cost of the first k sorted rows
    split = [0] * (n + 1)
    for k in range(1, n + 1):
        # Group order[j:k] for every j at once; its longest is order[j].
        costs = best[:k] + call_cost + (k - np.arange(k)) * longest[:k]
        split[k] = int(np.argmin(costs))
        best[k] = costs[split[k]]
    groups, k = [], n
    while k:
        groups.append(order[split[k] : k])
        k = split[k]
    return groups[::-1]


def _select_cache_rows(cache, rows: torch.Tensor):
    """A cache holding ``rows`` of ``cache`` (repeats allowed), leaving ``cache`` itself as it is."""
    picked = copy.copy(cache)
    picked.layers = [copy.copy(layer) for layer in cache.layers]
    # reorder_cache rebinds each layer's tensors to index_select copies, so the source keeps its own.
    picked.reorder_cache(rows)
    return picked


def shared_context_loglikelihoods(model, items: list[tuple[list[int], list[list[int]]]], pad_id: int, keep_ok: bool,
                                  best: bool = False):  # fmt: skip
    """Of items (context tokens, continuation token lists), each continuation's summed log-likelihood,
    item after item (float64, on the model's device); with ``best``, also each continuation's summed
    largest log-probability at its positions (the argmax response's, teacher-forced).

    The context runs once, left-padded (positions count real tokens only); the first token of
    every continuation is scored from its last position. The other continuation tokens run
    right-padded, one row per choice, on the context's KV cache copied per choice, in groups of
    similar length (:func:`_length_groups`) so that short choices are not padded to long ones.
    The conditional probabilities are those of the full ``context + continuation`` sequence.
    """
    device = model.device
    batch = left_pad([ctx for ctx, _ in items], pad_id, device)
    out = model(**batch, use_cache=True, **({"logits_to_keep": 1} if keep_ok else {}))
    first_lp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    conts = [cont for _, item_conts in items for cont in item_conts]
    item_of_row = torch.tensor([i for i, (_, item_conts) in enumerate(items) for _ in item_conts], device=device)
    first = torch.tensor([cont[0] for cont in conts], device=device)
    row_lp = first_lp[item_of_row, first].double()
    row_best = first_lp.max(-1).values[item_of_row].double()

    # One-token choices are done; the others need their remaining tokens scored on the cache.
    rows = [r for r, cont in enumerate(conts) if len(cont) > 1]
    ctx_mask = batch["attention_mask"]
    ctx_len = ctx_mask.sum(-1)
    for group in _length_groups([len(conts[r]) - 1 for r in rows]):
        picked = [rows[j] for j in group]
        owner = item_of_row[picked]
        inputs, mask = right_pad([conts[r][:-1] for r in picked], pad_id)
        inputs, mask = inputs.to(device), mask.to(device)
        logits = model(
            input_ids=inputs,
            attention_mask=torch.cat([ctx_mask[owner], mask], dim=1),
            position_ids=ctx_len[owner][:, None] + torch.arange(inputs.shape[1], device=device)[None, :],
            past_key_values=_select_cache_rows(out.past_key_values, owner),
            use_cache=True,
        ).logits
        tails = _summed_logprobs(logits, [0] * len(picked), [conts[r][1:] for r in picked], best)
        at = torch.tensor(picked, device=device)
        if best:
            row_lp[at] += tails[0]
            row_best[at] += tails[1]
        else:
            row_lp[at] += tails
    return (row_lp, row_best) if best else row_lp


# Attention implementations that take a 4D mask as given; the packed rows need one.
PACKED_ATTENTION = ("sdpa", "eager", causal_attention.NAME)
# Where the packed rows are used. On a GPU they save the KV cache's copies and the forward calls
# per group of choice lengths; on a CPU neither costs much, while a dense mask over a row's
# context and all its choices does, so the CPU keeps the cached path it was measured with.
PACKED_DEVICES = ("cuda",)


def _packed_loglikelihoods(model, items: list[tuple[list[int], list[list[int]]]], pad_id: int, keep_ok: bool):
    """:func:`shared_context_loglikelihoods` in one forward: an item's choices packed after its context.

    A row is ``[padding][context][choice 1 less its last token]...[choice k ...][padding]``, the
    contexts ending in one column. A 4D mask lets each choice's tokens see the context and that
    choice's earlier tokens only, and each sits at the position it has after the context alone, so
    the conditional probabilities are those of ``context + continuation``. Against a KV cache
    copied per choice, this saves the copies (a batch's context cache once per choice) and one
    forward call per group of choice lengths. The forward is the compiled one where evaluation
    compiles (:mod:`ptft.evaluate.forward`), and nothing here waits for the GPU: the inputs are
    copied from pinned memory (:func:`ptft.evaluate.batching.to_device`) and the sums stay on it.
    """
    device = model.device
    width_ctx = max(len(ctx) for ctx, _ in items)
    width = width_ctx + max(sum(len(c) - 1 for c in conts) for _, conts in items)
    ids, pos, seg = [], [], []  # seg: -1 padding, 0 context, j + 1 the item's choice j
    cols, targets = [], []  # per scored token: the column whose logits predict it, and the token
    for ctx, conts in items:
        pad = width_ctx - len(ctx)
        row_ids, row_pos, row_seg = [pad_id] * pad + ctx, [0] * pad + list(range(len(ctx))), [-1] * pad + [0] * len(ctx)
        for j, cont in enumerate(conts):
            start = len(row_ids)
            row_ids += cont[:-1]
            row_pos += range(len(ctx), len(ctx) + len(cont) - 1)
            row_seg += [j + 1] * (len(cont) - 1)
            # The first token is predicted by the context's last column, token m by the choice's m - 1.
            cols.append([width_ctx - 1] + list(range(start, start + len(cont) - 1)))
            targets.append(cont)
        fill = width - len(row_ids)
        ids.append(row_ids + [pad_id] * fill)
        pos.append(row_pos + [0] * fill)
        seg.append(row_seg + [-1] * fill)
    first = width_ctx - 1
    offset = first if keep_ok else 0
    lens = torch.tensor([len(t) for t in targets])
    n_conts = torch.tensor([len(conts) for _, conts in items])
    rows = torch.repeat_interleave(torch.repeat_interleave(torch.arange(len(items)), n_conts), lens)
    owner = torch.repeat_interleave(torch.arange(len(targets)), lens)
    flat_cols = torch.tensor(list(chain.from_iterable(cols))) - offset
    flat_targets = torch.tensor(list(chain.from_iterable(targets)))
    ids, pos, seg, rows, owner, flat_cols, flat_targets = (
        to_device(t if isinstance(t, torch.Tensor) else torch.tensor(t), device)
        for t in (ids, pos, seg, rows, owner, flat_cols, flat_targets)
    )
    order = torch.arange(width, device=device)
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    real = seg >= 0
    visible = same & (order[None, :] <= order[:, None]) & real[:, None, :] & real[:, :, None]
    visible |= torch.eye(width, dtype=torch.bool, device=device)  # padding sees itself: no empty softmax
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, torch.finfo(dtype).min)
    kwargs = {"logits_to_keep": width - first} if keep_ok else {}
    logits = forward(model)(input_ids=ids, attention_mask=mask[:, None], position_ids=pos, **kwargs).logits
    token_lp = torch.log_softmax(logits[rows, flat_cols].float(), dim=-1).gather(-1, flat_targets[:, None])[:, 0]
    return torch.zeros(len(targets), dtype=torch.float64, device=device).index_add_(0, owner, token_lp.double())


@torch.no_grad()
def score_multiple_choice(
    model,
    tokenizer,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    batch_size: int,
    delimiter: str = " ",
    add_bos: str | bool = "auto",
    return_truncated: bool = False,
):
    """Per item, the log-likelihood of each of its choices (the module docstring's definition).

    An item's context is computed once and shared by its choices (batches of ``batch_size``
    items, sorted by context length). An item whose longest request would be truncated to the
    context window is scored request by request instead, because lm-eval's left truncation then
    cuts a different context for each choice. With ``return_truncated`` the result is (that list,
    per item the most context tokens any of its requests lost to the left truncation).
    """
    if len(contexts) != len(choices):
        raise ValueError(f"{len(contexts)} contexts but {len(choices)} choice lists")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    requests = [(ctx, delimiter + choice) for ctx, item in zip(contexts, choices, strict=True) for choice in item]
    encoded = encode_requests(tokenizer, requests, add_bos)
    starts = np.cumsum([0] + [len(item) for item in choices])
    # Every request of an item has the same context tokens (the whitespace move is per context).
    spans = list(zip(starts[:-1], starts[1:], strict=True))
    items = [(encoded[a][0] if b > a else [], [cont for _, cont in encoded[a:b]]) for a, b in spans]
    # lm-eval's empty-context rule can give one choice of an item a context of its own.
    shared_ctx = [all(encoded[k][0] == encoded[a][0] for k in range(a, b)) for a, b in spans]
    max_length = model_max_length(model, tokenizer)
    fits = [
        bool(conts) and same and len(ctx) + max(map(len, conts)) <= max_length + 1
        for (ctx, conts), same in zip(items, shared_ctx, strict=True)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep_ok = keeps_logits(model)

    out: list[np.ndarray] = [np.zeros(len(item)) for item in choices]
    packed = (getattr(model.config, "_attn_implementation", None) in PACKED_ATTENTION
              and model.device.type in PACKED_DEVICES)  # fmt: skip
    shared = partial(_packed_loglikelihoods if packed else shared_context_loglikelihoods, model)
    fitting = [i for i, ok in enumerate(fits) if ok]
    done, sums = [], []  # read back once at the end: the GPU runs a batch while the next one is built
    with progress(len(fitting), "multiple choice") as bar:
        for batch in length_sorted_batches([len(items[i][0]) for i in fitting], batch_size):
            picked = [fitting[j] for j in batch]
            sums.append(shared([items[i] for i in picked], pad_id, keep_ok))
            done += picked
            bar.update(len(batch))
    if done:
        flat = torch.cat(sums).cpu().numpy()
        for i, lls in zip(done, np.split(flat, np.cumsum([len(choices[i]) for i in done])[:-1]), strict=True):
            out[i] = lls
    long = [i for i, ok in enumerate(fits) if not ok and choices[i]]
    if long:
        flat = continuation_loglikelihoods(
            model, tokenizer, [r for i in long for r in requests[starts[i] : starts[i + 1]]], batch_size, add_bos
        )
        for i, lls in zip(long, np.split(flat, np.cumsum([len(choices[i]) for i in long])[:-1]), strict=True):
            out[i] = lls
    if return_truncated:
        over = [[len(ctx) + len(cont) - (max_length + 1) for ctx, cont in encoded[a:b]] for a, b in spans]
        return out, [max([0, *o]) for o in over]
    return out


def mc_predictions(loglikelihoods: np.ndarray, choices: Sequence[str]) -> dict[str, int]:
    """The choice each metric picks: ``acc`` by total log-likelihood, ``acc_norm`` per character."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    if lls.shape != (len(choices),):
        raise ValueError(f"{lls.shape} log-likelihoods for {len(choices)} choices")
    completion_len = np.array([float(len(c)) for c in choices])
    # An empty choice string gives ll / 0 = -inf (or nan), exactly what lm-eval's numpy division gives.
    with np.errstate(divide="ignore", invalid="ignore"):
        pred_norm = int(np.argmax(lls / completion_len))
    return {"acc": int(np.argmax(lls)), "acc_norm": pred_norm}


def mc_metrics(loglikelihoods: np.ndarray, choices: Sequence[str], gold: int) -> dict[str, float]:
    """lm-eval's acc and acc_norm for one item (module docstring)."""
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold index {gold} outside {len(choices)} choices")
    return {metric: float(pred == gold) for metric, pred in mc_predictions(loglikelihoods, choices).items()}
