"""Output checks: which replies are usable rewrites.

A reply is rejected, with the first reason that applies, when it is
- ``empty``: nothing but whitespace;
- ``refused``: it opens like a refusal ("I'm sorry", "I cannot", "As an AI", ...);
- ``too_short``: fewer characters than ``min_length_ratio`` × the input's;
- ``copy``: the input again (after lowercasing and collapsing whitespace, a difflib similarity
  of at least ``max_copy_similarity``);
- ``repetitive``: a degenerate loop, fewer than ``min_distinct_ngrams`` of its word 3-grams
  distinct (texts of 20 words or more).
A chatty first line such as "Here is the rewritten text:" is removed before checking.
"""

from __future__ import annotations

import difflib
import re

REASONS = ("empty", "refused", "too_short", "copy", "repetitive")
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, |i cannot|i can'?t|i can not|i'?m unable|i am unable|as an ai|"
    r"i won'?t|i will not)",
    re.IGNORECASE,
)
_PREAMBLE = re.compile(r"^\s*(sure|certainly|okay|ok)?[ ,!.]*(here is|here's|below is)[^\n]*:\s*\n", re.IGNORECASE)
DEFAULTS = {"min_length_ratio": 0.3, "max_copy_similarity": 0.95, "min_distinct_ngrams": 0.3}


def clean(text: str) -> str:
    return _PREAMBLE.sub("", text, count=1).strip()


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def rejection(reply: str, source: str, cfg: dict | None = None) -> str | None:
    """Why ``reply`` (cleaned) is not a usable rewrite of ``source``, or None if it is."""
    cfg = {**DEFAULTS, **(cfg or {})}
    if not reply.strip():
        return "empty"
    if _REFUSAL.match(reply):
        return "refused"
    if len(reply) < cfg["min_length_ratio"] * len(source):
        return "too_short"
    a, b = _normal(reply), _normal(source)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    # quick_ratio bounds ratio from above and is far cheaper.
    limit = cfg["max_copy_similarity"]
    if a == b or (matcher.quick_ratio() >= limit and matcher.ratio() >= limit):
        return "copy"
    words = a.split()
    if len(words) >= 20:
        grams = list(zip(words, words[1:], words[2:], strict=False))
        if len(set(grams)) < cfg["min_distinct_ngrams"] * len(grams):
            return "repetitive"
    return None
