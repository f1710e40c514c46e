"""The ``toy`` backend: exact rewrites in the toy world, from each document's latent facts.

It ignores the instruction and reads ``request.meta`` (``latent``: the document's facts,
``variant``: the variant's name), so the toy study runs the derivation stage offline and its
variants change exactly one factor. Token counts are whitespace words, as a stand-in.

It also answers the learning-dynamics probe set's rewrites (:mod:`ptft.probes`) of any text in
the toy world's words, with ``meta = {"variant": "probe:<kind>", "text": <response>, "seed": <int>}``:

- ``probe:semantic`` (same meaning, other words): every adjective becomes another of its pole
  (``big`` → ``large``), every verb another of its synonym group (``sees`` → ``spots``, ``see`` →
  ``spot``); every other word stays. A text with neither is returned as it is;
- ``probe:format`` (same frame, another meaning): every adjective goes to the opposite pole
  (``big`` → ``small``), every object, place, name, mood, colour and time becomes another one of
  the lexicon (an object or place of the same domain), every verb one of another group;
- ``probe:random``: a seeded random sequence of lexicon words, as many as the text has words.

Choices are seeded by the variant, the request's seed and the text, so a request always gets
the same reply.
"""

from __future__ import annotations

import json
import random
import re

from ptft.derive.backend import Backend, Reply
from ptft.toy import world as w
from ptft.toy.docs import rewrite

PROBE_PREFIX = "probe:"
PROBE_KINDS = ("semantic", "format", "random")
_WORD = re.compile(r"[a-z]+")
# Each adjective pole and verb group (third person and base form) as a list of interchangeable words.
_POLES = [list(pole) for poles in w.ADJ_SCALES.values() for pole in poles]
_VERB_FORMS = [list(group) for group in w.VERB_GROUPS] + [[w.base_form(v) for v in group] for group in w.VERB_GROUPS]
# Words that format replaces with another of their class (objects and places within their domain).
_CLASSES = [list(w.NAMES), *map(list, w.OBJECTS.values()), *map(list, w.PLACES.values()), list(w.MOODS),
            list(w.COLORS), list(w.TIMES)]  # fmt: skip
LEXICON = tuple(dict.fromkeys([*w.NAMES, *(o for d in w.OBJECTS.values() for o in d),
                               *(p for d in w.PLACES.values() for p in d), *w.ALL_ADJECTIVES, *w.ALL_VERBS,
                               *w.MOODS, *w.COLORS, *w.TIMES]))  # fmt: skip


def _group(word: str, groups: list[list[str]]) -> list[str] | None:
    return next((g for g in groups if word in g), None)


def _other(rng: random.Random, word: str, group: list[str]) -> str:
    others = [x for x in group if x != word]
    return rng.choice(others) if others else word


def _semantic(rng: random.Random, word: str) -> str:
    group = _group(word, _POLES) or _group(word, _VERB_FORMS)
    return word if group is None else _other(rng, word, group)


def _opposite_pole(word: str) -> list[str] | None:
    for poles in w.ADJ_SCALES.values():
        for polarity, pole in enumerate(poles):
            if word in pole:
                return list(poles[1 - polarity])
    return None


def _format(rng: random.Random, word: str) -> str:
    opposite = _opposite_pole(word)
    if opposite is not None:
        return rng.choice(opposite)
    for forms in (list(w.VERB_GROUPS), [[w.base_form(v) for v in g] for g in w.VERB_GROUPS]):
        i = next((k for k, g in enumerate(forms) if word in g), None)
        if i is not None:  # a verb of another group, in the same form
            return rng.choice([v for k, g in enumerate(forms) if k != i for v in g])
    group = _group(word, _CLASSES)
    return word if group is None else _other(rng, word, group)


def probe_rewrite(kind: str, text: str, seed: int = 0) -> str:
    """The toy world's ``probe:<kind>`` rewrite of ``text`` (module docstring)."""
    rng = random.Random(f"{PROBE_PREFIX}{kind}|{seed}|{text}")
    if kind == "random":
        return " ".join(rng.choice(LEXICON) for _ in text.split())
    if kind == "semantic":
        return _WORD.sub(lambda m: _semantic(rng, m.group()), text)
    if kind == "format":
        return _WORD.sub(lambda m: _format(rng, m.group()), text)
    raise ValueError(f"toy backend: no probe rewrite {kind!r}; it knows {[PROBE_PREFIX + k for k in PROBE_KINDS]}")


class ToyBackend(Backend):
    name = "toy"
    model = "toy-world"

    def run(self, requests, on_reply, on_failure) -> None:
        for request in requests:
            variant = str(request.meta.get("variant", ""))
            try:
                if variant.startswith(PROBE_PREFIX):
                    if request.meta.get("text") is None:
                        on_failure(request, "toy backend: a probe rewrite request carries no text in its meta")
                        continue
                    text = probe_rewrite(variant[len(PROBE_PREFIX) :], request.meta["text"],
                                         int(request.meta.get("seed", 0)))  # fmt: skip
                else:
                    latent = request.meta.get("latent")
                    if not latent:
                        on_failure(request, "toy backend: the document has no latent facts (not a toy_docs document)")
                        continue
                    text = rewrite(json.loads(latent), variant)
            except ValueError as e:
                on_failure(request, str(e))
                continue
            prompt_words = sum(len(m["content"].split()) for m in request.messages)
            on_reply(request, Reply(text, prompt_words, len(text.split())))
