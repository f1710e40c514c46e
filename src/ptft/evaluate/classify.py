"""Classification by TokenProb (the default) or, as the Appendix B ablations, Constrained or Free generation.

``evaluate.classification`` picks the method; each is defined exactly:

- ``tokenprob``: :func:`ptft.evaluate.tokenprob.score_token_prob` (the label owning the most
  probable of its lenient token ids at the last prompt position).
- ``constrained``: greedy decoding in which every step may only emit a token that continues the
  tokenization of some label, with or without a leading space (a prefix trie over those token
  sequences), and EOS once a whole label has been emitted; it ends at a whole label that no
  longer label extends, or at EOS. The prediction is the label so emitted, so one always is.
- ``free``: greedy decoding of ``max_new_tokens.classification`` tokens, cut at the stop string;
  the prediction is the label whose first whole-word, case-insensitive occurrence in the output
  comes first (ties: the longer label), or ``""`` (scored wrong) if none occurs.

Every method also records the TokenProb label log-probabilities, so the per-example outputs
allow any of the three to be compared on the same items.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ptft.evaluate.encoding import add_bos_setting
from ptft.evaluate.generate import generate_greedy, generation_batch_size
from ptft.evaluate.prefix import shares_prefix
from ptft.evaluate.tokenprob import score_token_prob

METHODS = ("tokenprob", "constrained", "free")


def label_sequences(tokenizer, labels: Sequence[str]) -> dict[tuple[int, ...], str]:
    """Each label's token sequences (tokenized with and without a leading space) -> the label."""
    out: dict[tuple[int, ...], str] = {}
    for label in labels:
        for variant in (label, " " + label):
            out.setdefault(tuple(tokenizer(variant, add_special_tokens=False)["input_ids"]), label)
    return out


def trie_allowed(sequences: Sequence[tuple[int, ...]], eos_id: int):
    """``allowed(prefix)``: the tokens that keep ``prefix`` on a label's token sequence."""
    complete = set(sequences)
    children: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        for i in range(len(seq)):
            children.setdefault(seq[:i], set()).add(seq[i])

    def allowed(prefix: list[int]) -> list[int]:
        key = tuple(prefix)
        if key and key[-1] == eos_id and key[:-1] in complete:
            return [eos_id]  # finished rows of a batch keep emitting EOS until all are done
        nxt = set(children.get(key, ()))
        if key in complete:
            nxt.add(eos_id)
        return sorted(nxt) or [eos_id]

    return allowed


def match_label(text: str, labels: Sequence[str]) -> str:
    """The label whose first whole-word occurrence in ``text`` comes first (free generation)."""
    found = []
    for label in labels:
        m = re.search(rf"(?<!\w){re.escape(label.lower())}(?!\w)", text.lower())
        if m:
            found.append((m.start(), -len(label), label))
    return min(found)[2] if found else ""


def classify(
    model, tokenizer, prompts: Sequence[str], labels: Sequence[str], cfg: dict, return_truncated: bool = False
):
    """(predicted label per prompt, TokenProb label log-probabilities per prompt) by ``cfg["classification"]``.

    With ``return_truncated``, third: the prompt tokens each prompt lost to the window in the
    method that made the prediction (generation reserves room for its new tokens).
    """
    method = cfg.get("classification", "tokenprob")
    if method not in METHODS:
        raise ValueError(f"evaluate.classification: {method!r} is not one of {', '.join(METHODS)}")
    add_bos = add_bos_setting(cfg)
    pred_idx, logprobs, cut = score_token_prob(
        model,
        tokenizer,
        prompts,
        labels,
        cfg["batch_size"],
        add_bos=add_bos,
        return_truncated=True,
        shared_prefix=shares_prefix(cfg),
    )
    if method == "tokenprob":
        predictions = [labels[i] for i in pred_idx]
    elif method == "free":
        texts, cut = generate_greedy(model, tokenizer, prompts, cfg["max_new_tokens"]["classification"], cfg["stop"],
                                     generation_batch_size(cfg), add_bos=add_bos, return_truncated=True,
                                     decoder=cfg.get("decoder", "auto"), shared_prefix=shares_prefix(cfg))  # fmt: skip
        predictions = [match_label(t, labels) for t in texts]
    else:
        sequences = label_sequences(tokenizer, labels)
        allowed = trie_allowed(list(sequences), tokenizer.eos_token_id)
        texts, cut = generate_greedy(model, tokenizer, prompts, max(map(len, sequences)) + 1, "", cfg["batch_size"],
                                     allowed, add_bos=add_bos, return_truncated=True)  # fmt: skip
        by_text = {tokenizer.decode(list(seq)).strip(): label for seq, label in sequences.items()}
        predictions = [by_text[t] for t in texts]
    return (predictions, logprobs, cut) if return_truncated else (predictions, logprobs)
