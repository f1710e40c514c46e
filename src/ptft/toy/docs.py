"""Toy documents and their controlled-variable rewrites, computed exactly from latent facts.

A toy document tells who went where and did what to which thing, and how they felt. Its
facts (the latent variables) are stored with it, so each variant of the Dissecting study
(docs/studies.md §2) is an exact rewrite that changes one factor and keeps the others:

- ``topic``: the same sentences about the other domain (home -> wild nouns), style kept;
- ``style:casual`` / ``style:rap``: the same facts in another register;
- ``counterfactual``: same topic and style, every fact changed (another person, place, thing,
  action, the opposite adjective, another mood);
and, for probe sets (docs/studies.md §3):
- ``rephrase``: the same meaning in other words (synonym verb and adjective, another frame);
- ``format``: the same sentence frames with another meaning (as ``counterfactual``).
"""

from __future__ import annotations

import json
import random

from ptft.toy import world as w

STYLES = {
    "plain": "{name} went to the {place} . there {name} {verb} a {adj} {obj} . {name} felt {mood} . it was {time} .",
    "casual": "so {name} heads over to the {place} , right ? and {name} totally {verb} this {adj} {obj} . "
    "{name} was super {mood} . like , it was {time} .",
    "rap": "yo {name} rolled to the {place} , yeah . {name} {verb} that {adj} {obj} , no cap . "
    "{name} stay {mood} , all {time} long .",
    "rephrased": "{name} walked into the {place} . in there {name} {verb} one {adj} {obj} . "
    "{name} was feeling {mood} . the time was {time} .",
}
VARIANTS = ("topic", "style:casual", "style:rap", "counterfactual", "rephrase", "format")


def document(rng: random.Random, domain: str) -> dict:
    """One toy document in the plain style, with its facts as JSON in ``latent``."""
    latent = {
        "domain": domain,
        "name": rng.choice(w.NAMES),
        "place": rng.choice(w.PLACES[domain]),
        "obj": rng.choice(w.OBJECTS[domain]),
        "verb": rng.choice(w.ALL_VERBS),
        "adj": rng.choice(w.ALL_ADJECTIVES),
        "mood": rng.choice(w.MOODS),
        "time": rng.choice(w.TIMES),
    }
    return {"text": render(latent), "latent": json.dumps(latent, sort_keys=True)}


def render(latent: dict, style: str = "plain") -> str:
    return STYLES[style].format(**latent)


def _shift(seq, item, by: int = 1):
    return seq[(seq.index(item) + by) % len(seq)]


def _other_domain(latent: dict) -> dict:
    # The i-th noun of one domain becomes the i-th of the other: the structure stays, the topic moves.
    src = latent["domain"]
    dst = "wild" if src == "home" else "home"
    return {**latent, "domain": dst,
            "place": w.PLACES[dst][w.PLACES[src].index(latent["place"])],
            "obj": w.OBJECTS[dst][w.OBJECTS[src].index(latent["obj"])]}  # fmt: skip


def _opposite(adj: str) -> str:
    scale, polarity = w.adjective_pole(adj)
    poles = w.ADJ_SCALES[scale]
    return poles[1 - polarity][poles[polarity].index(adj) % len(poles[1 - polarity])]


def _synonym(word: str, groups) -> str:
    group = next(g for g in groups if word in g)
    return _shift(list(group), word) if len(group) > 1 else word


def _changed_facts(latent: dict) -> dict:
    d = latent["domain"]
    group = w.verb_group(latent["verb"])
    next_group = w.VERB_GROUPS[(group + 1) % len(w.VERB_GROUPS)]
    return {**latent,
            "name": _shift(w.NAMES, latent["name"]),
            "place": _shift(w.PLACES[d], latent["place"]),
            "obj": _shift(w.OBJECTS[d], latent["obj"]),
            "verb": next_group[w.VERB_GROUPS[group].index(latent["verb"]) % len(next_group)],
            "adj": _opposite(latent["adj"]),
            "mood": _shift(w.MOODS, latent["mood"]),
            "time": _shift(w.TIMES, latent["time"])}  # fmt: skip


def rewrite(latent: dict, variant: str) -> str:
    """The exact ``variant`` of the document with facts ``latent`` (see the module docstring)."""
    if variant == "topic":
        return render(_other_domain(latent))
    if variant.startswith("style:") and variant.split(":", 1)[1] in STYLES:
        return render(latent, variant.split(":", 1)[1])
    if variant in ("counterfactual", "format"):
        return render(_changed_facts(latent))
    if variant == "rephrase":
        poles = [pole for pair in w.ADJ_SCALES.values() for pole in pair]
        return render({**latent, "verb": _synonym(latent["verb"], w.VERB_GROUPS),
                       "adj": _synonym(latent["adj"], poles)}, "rephrased")  # fmt: skip
    raise ValueError(f"toy backend: no exact rewrite for variant {variant!r}; it knows {list(VARIANTS)}")
