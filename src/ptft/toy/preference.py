"""Toy preference pairs: a question about a thing of the toy world, a helpful and an unhelpful answer.

The world of Ren & Sutherland's learning-dynamics study in miniature. A prompt asks about one
object; the chosen response answers about that object in three to five clauses whose details
(adjectives, places, people, times) are drawn at random, so no model can predict them and the
chosen response is far from the model's most likely one, as a human-written response is; the
rejected response is of the same frame but unhelpful: it talks about something else or declines.
Both are in the words of :mod:`ptft.toy.world`, whose synonym groups and adjective poles the toy
derivation backend uses for the probe rewrites (same meaning in other words; same format,
another meaning).
"""

from __future__ import annotations

import random

from ptft.toy import world as w

QUESTIONS = (
    "tell me about the {obj} .",
    "what do you know about the {obj} ?",
    "can you describe the {obj} ?",
    "where is the {obj} and what is it like ?",
)


def _clause(rng: random.Random, subject: str, domain: str) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"{subject} is {rng.choice(w.ALL_ADJECTIVES)}"
    if kind == 1:
        return f"{subject} is in the {rng.choice(w.PLACES[domain])}"
    if kind == 2:
        return f"{rng.choice(w.NAMES)} {rng.choice(w.ALL_VERBS)} {subject} in the {rng.choice(w.TIMES)}"
    return f"{subject} is {rng.choice(w.COLORS)} and {rng.choice(w.ALL_ADJECTIVES)}"


def _answer(rng: random.Random, subject: str, domain: str) -> str:
    first = _clause(rng, f"the {subject}", domain)
    rest = [_clause(rng, "it", domain) for _ in range(rng.randint(2, 4))]
    return " . ".join([first, *rest]) + " ."


EVASIONS = (
    "i do not know . ask {name} in the {time} .",
    "sorry , {name} is {mood} and {name2} is {mood2} .",
    "i do not know . {name} is {mood} today .",
    "sorry , ask {name} . {name2} is {mood} in the {time} .",
)


def _evasion(rng: random.Random) -> str:
    """An unhelpful reply: it declines and chats about people, never about the thing asked about."""
    names = rng.sample(w.NAMES, 2)
    return rng.choice(EVASIONS).format(name=names[0], name2=names[1], mood=rng.choice(w.MOODS),
                                       mood2=rng.choice(w.MOODS), time=rng.choice(w.TIMES))  # fmt: skip


def preference(rng: random.Random, domain: str) -> dict:
    obj = rng.choice(w.OBJECTS[domain])
    chosen = _answer(rng, obj, domain)
    rejected = _evasion(rng)
    return {"prompt": f"human : {rng.choice(QUESTIONS).format(obj=obj)}\nassistant :", "chosen": chosen,
            "rejected": rejected}  # fmt: skip
