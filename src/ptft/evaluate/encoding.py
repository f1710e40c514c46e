"""Prompt encoding for scoring: the BOS rule shared by TokenProb, generation and multiple choice.

``evaluate.add_bos`` decides whether a prompt (or multiple-choice context) is conditioned on
the tokenizer's BOS token:

- ``"auto"`` (default): as lm-evaluation-harness 0.4.13's HF model does by default, i.e. with
  the tokenizer's own default, ``add_special_tokens=True``. BOS is prepended when the tokenizer
  adds it there (LLaMA-family tokenizers); tokenizers that add nothing (GPT-NeoX's of Pythia and
  OLMo, ptft's toy tokenizer, whose ``bos_token`` is EOS but is never added) get no BOS.
- ``true``: BOS is always prepended (lm-eval's ``add_bos_token=True``); the tokenizer must have one.
- ``false``: no special token is added (``add_special_tokens=False``), as ptft did before.

As in lm-eval's ``tok_encode``, a text that already starts with the BOS string gets no second
one. The text itself is always encoded with ``add_special_tokens=False`` and BOS put in front,
so a tokenizer that adds other special tokens by default (an EOS at the end) does not get them.

An empty multiple-choice context is conditioned as lm-eval's ``loglikelihood`` does: on its
``prefix_token_id`` (the BOS token where the tokenizer has one, else EOS), and if the
continuation already starts with that token, its first token becomes the context instead. With
``add_bos: false`` the context is the EOS token, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

MODES = ("auto", True, False)


def add_bos_setting(cfg: dict | None) -> str | bool:
    """``cfg["add_bos"]``; a config without the key (tests; the schema fills it in the workflow) is ``"auto"``."""
    value = (cfg or {}).get("add_bos", "auto")
    if value not in MODES or isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"evaluate.add_bos: {value!r} is not one of auto, true, false")
    return value


def adds_bos_by_default(tokenizer) -> bool:
    """Whether the tokenizer's default encoding (``add_special_tokens=True``) starts with its BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    default = tokenizer("a")["input_ids"]
    return len(default) > len(plain) and default[0] == bos and default[1 : 1 + len(plain)] == plain


def uses_bos(tokenizer, add_bos: str | bool) -> bool:
    if add_bos not in MODES:
        raise ValueError(f"evaluate.add_bos: {add_bos!r} is not one of auto, true, false")
    if add_bos is True:
        if tokenizer.bos_token_id is None:
            raise ValueError("evaluate.add_bos is true but the tokenizer has no BOS token")
        return True
    if add_bos is False:
        return False
    return adds_bos_by_default(tokenizer)


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    if not texts:
        return []
    # Only the ids are needed; building the other fields costs as much as the BPE itself.
    out = tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    return out["input_ids"]


def encode_prompts(tokenizer, texts: Sequence[str], add_bos: str | bool) -> list[list[int]]:
    """Token ids of each prompt as scored: BOS first where ``add_bos`` says so (module docstring)."""
    ids = encode_texts(tokenizer, texts)
    if not uses_bos(tokenizer, add_bos):
        return ids
    bos, bos_text = tokenizer.bos_token_id, tokenizer.bos_token
    return [e if bos_text and t.startswith(bos_text) else [bos, *e] for t, e in zip(texts, ids, strict=True)]


def bos_prefix_length(tokenizer, texts: Sequence[str], add_bos: str | bool) -> list[int]:
    """Per text, how many leading ids :func:`encode_prompts` added (1 for a BOS, else 0)."""
    if not uses_bos(tokenizer, add_bos):
        return [0] * len(texts)
    bos_text = tokenizer.bos_token
    return [0 if bos_text and t.startswith(bos_text) else 1 for t in texts]


def empty_context_split(tokenizer, continuation_ids: list[int], add_bos: str | bool) -> tuple[list[int], list[int]]:
    """(context, continuation) ids of a request with an empty context (module docstring)."""
    if add_bos is False:
        if tokenizer.eos_token_id is None:
            raise ValueError("an empty context needs the tokenizer's EOS token to condition on")
        return [tokenizer.eos_token_id], list(continuation_ids)
    uses_bos(tokenizer, add_bos)  # validates the setting
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise ValueError("an empty context needs the tokenizer's BOS or EOS token to condition on")
    if continuation_ids and continuation_ids[0] == prefix:
        return list(continuation_ids[:1]), list(continuation_ids[1:])
    return [prefix], list(continuation_ids)


def fit_to_window(
    tokenizer, texts: Sequence[str], ids: list[list[int]], limit: int, add_bos: str | bool
) -> tuple[list[list[int]], list[int]]:
    """Prompts cut to at most ``limit`` tokens, and how many prompt tokens each lost.

    A prompt that is too long loses its oldest parts first: the cut falls at the latest part
    start (:attr:`ptft.data.prompts.Prompt.part_starts`: each few-shot example, then the query)
    that leaves the rest fitting, so whole few-shot examples go, oldest first, and the query stays
    whole. If the query alone does not fit, its first tokens go (the start of its document) and
    the end of the prompt, with the question and answer cue, stays. A BOS token stays in front.
    A plain string has one part, the query.
    """
    limit = max(1, limit)
    long = [i for i, e in enumerate(ids) if len(e) > limit]
    if not long:
        return ids, [0] * len(ids)
    prefix = bos_prefix_length(tokenizer, texts, add_bos)
    out, cut = list(ids), [0] * len(ids)
    # A cut at the first character would keep everything: a prompt without a later part is cut as a plain string.
    cuttable = [texts[i] if any(start > 0 for start in getattr(texts[i], "part_starts", ())) else str(texts[i])
                for i in long]  # fmt: skip
    for i, part_tokens in zip(long, part_start_tokens(tokenizer, cuttable), strict=True):
        head, body = ids[i][: prefix[i]], ids[i][prefix[i] :]
        room = max(0, limit - len(head))
        keep_from = len(body) - room  # plain left truncation
        for token in part_tokens:
            if token >= keep_from:
                keep_from = token
                break
        kept = body[keep_from:] if room else []
        out[i] = head + kept
        if len(out[i]) > limit:  # the BOS alone may exceed a window of 1
            out[i] = out[i][-limit:]
        cut[i] = len(ids[i]) - len(out[i])
    return out, cut


def part_start_tokens(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Per text, for each part start (:attr:`ptft.data.prompts.Prompt.part_starts`, in order), the
    index among its ids (:func:`encode_texts`) of the first token at or after that character; a
    plain string has none.

    The fast tokenizer's own encodings answer it (``char_to_token``) without building every
    token's offsets as Python objects: for 512 prompts of 3,000 words that took longer than the
    encoding itself.
    """
    out: list[list[int]] = [[] for _ in texts]
    with_parts = [k for k, t in enumerate(texts) if getattr(t, "part_starts", ())]
    if not with_parts:
        return out
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # as before, where the offset mapping was asked for: only fast tokenizers have one
        raise NotImplementedError(f"cutting a prompt at its parts needs a fast tokenizer; {type(tokenizer).__name__} "
                                  "is not one")  # fmt: skip
    encodings = backend.encode_batch([str(texts[k]) for k in with_parts], add_special_tokens=False)
    for k, enc in zip(with_parts, encodings, strict=True):
        out[k] = [_first_token_from(enc, start, len(texts[k])) for start in sorted(texts[k].part_starts)]
    return out


def _first_token_from(enc, start: int, length: int) -> int:
    """The first token of ``enc`` whose first character is at or after ``start`` (its token count if none)."""
    for char in range(start, length):
        token = enc.char_to_token(char)
        if token is None:  # a character no token holds (whitespace the pre-tokenizer dropped)
            continue
        # A token that began before ``start`` (merged across it) is not in the part; the next one is.
        return token if enc.token_to_chars(token)[0] >= start else token + 1
    return len(enc.ids)
