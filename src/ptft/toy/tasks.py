"""Generators of the toy datasets, one record at a time, in hub-like schemas.

Each generator takes a ``random.Random`` and a domain (``home`` or ``wild``) and returns
one record whose fields match the real dataset the task mirrors (MNLI, PAWS, XSum,
SocialIQA-as-question-generation), so the rest of the pipeline cannot tell toy from real.
"""

from __future__ import annotations

import json
import random

from ptft.toy import world as w


def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


def nli(rng: random.Random, domain: str) -> dict:
    """Entailment restates the premise's adjective, contradiction negates it, neutral names another."""
    label = rng.randrange(3)
    adj = _pick(rng, w.ALL_ADJECTIVES)
    name, obj, place = _pick(rng, w.NAMES), _pick(rng, w.OBJECTS[domain]), _pick(rng, w.PLACES[domain])
    kind = w.NLI_LABELS[label]
    adj_h = adj if kind != "neutral" else _pick(rng, [a for a in w.ALL_ADJECTIVES if a != adj])
    neg = "not " if kind == "contradiction" else ""
    if domain == "home":
        premise = f"{name} has a {adj} {obj} in the {place} ."
        hypothesis = f"the {obj} is {neg}{adj_h} ."
    else:
        premise = f"in the {place} , {name} saw a {adj} {obj} ."
        hypothesis = f"that {obj} was {neg}{adj_h} ."
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


def paraphrase(rng: random.Random, domain: str) -> dict:
    """PAWS-like: a paraphrase swaps in a synonym verb; a non-paraphrase also negates the
    sentence with "never" or swaps who does what to whom (each half of the time)."""
    label = rng.randrange(2)
    group = w.VERB_GROUPS[rng.randrange(len(w.VERB_GROUPS))]
    verb1 = _pick(rng, group)
    verb2 = _pick(rng, [v for v in group if v != verb1])
    a, b = rng.sample(w.NAMES, 2)
    place = _pick(rng, w.PLACES[domain])
    first, second, never = a, b, ""
    if w.YES_NO[label] == "no":
        if rng.random() < 0.5:
            never = "never "
        else:
            first, second = b, a
    if domain == "home":
        s1 = f"{a} {verb1} {b} in the {place} ."
        s2 = f"{first} {never}{verb2} {second} in the {place} ."
    else:
        s1 = f"does {a} {w.base_form(verb1)} {b} near the {place} ?"
        s2 = f"near the {place} , does {first} {never}{w.base_form(verb2)} {second} ?"
    return {"sentence1": s1, "sentence2": s2, "label": label}


def _fillers(rng: random.Random, name: str) -> list[str]:
    options = [
        f"the sky was {_pick(rng, w.COLORS)} .",
        f"{name} felt {_pick(rng, w.MOODS)} .",
        f"it was {_pick(rng, w.TIMES)} .",
    ]
    rng.shuffle(options)
    return options[: rng.randint(1, 3)]


def summary(rng: random.Random, domain: str) -> dict:
    name, obj, place = _pick(rng, w.NAMES), _pick(rng, w.OBJECTS[domain]), _pick(rng, w.PLACES[domain])
    verb, adj = _pick(rng, w.ALL_VERBS), _pick(rng, w.ALL_ADJECTIVES)
    fillers = _fillers(rng, name)
    if domain == "home":
        core = [f"{name} went to the {place} .", f"there {name} {verb} a {adj} {obj} ."]
    else:
        core = [f"one day {name} walked to the {place} .", f"a {adj} {obj} was near and {name} {verb} it ."]
    cut = rng.randint(0, len(fillers))
    sentences = fillers[:cut] + core[:1] + fillers[cut:] + core[1:]
    return {"document": " ".join(sentences), "summary": f"{name} {verb} a {obj} in the {place} ."}


def question_generation(rng: random.Random, domain: str) -> dict:
    """SocialIQA used as question generation; answer A is always the correct one."""
    name, obj, place = _pick(rng, w.NAMES), _pick(rng, w.OBJECTS[domain]), _pick(rng, w.PLACES[domain])
    verb, adj = _pick(rng, w.ALL_VERBS), _pick(rng, w.ALL_ADJECTIVES)
    if domain == "home":
        context = f"{name} {verb} the {adj} {obj} in the {place} ."
    else:
        context = f"near the {place} , {name} {verb} a {adj} {obj} ."
    kind = _pick(rng, ("who", "what", "where"))
    if kind == "who":
        pool, answer = w.NAMES, name
        question = f"who {verb} the {obj} in the {place} ?"
    elif kind == "what":
        pool, answer = w.OBJECTS[domain], obj
        question = f"what does {name} {w.base_form(verb)} in the {place} ?"
    else:
        pool, answer = w.PLACES[domain], place
        question = f"where does {name} {w.base_form(verb)} the {obj} ?"
    distractors = rng.sample([x for x in pool if x != answer], 2)
    article = "" if kind == "who" else "the "
    answers = [article + a for a in [answer, *distractors]]
    return {
        "context": context,
        "answerA": answers[0],
        "answerB": answers[1],
        "answerC": answers[2],
        "question": question,
    }


# Task kinds whose items are not keyed on all their fields: a preference pair is its prompt and chosen
# response (the same question answered the same way is the same item, whatever it is contrasted with).
_KEY_FIELDS = {"preference": ("prompt", "chosen")}


def record_key(task, record: dict) -> tuple:
    """The inputs of a record (its task's fields): two records with the same key are the same item."""
    fields = _KEY_FIELDS.get(task.kind) or task.fields or (task.target,)  # a plain document is its own input
    return tuple(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
                 for v in (record[f] for f in fields))  # fmt: skip


TASK_GENERATORS = {
    "nli": nli,
    "paraphrase": paraphrase,
    "summary": summary,
    "question_generation": question_generation,
}


def chat(rng: random.Random, domain: str, held_out: dict[str, set[tuple]] | None = None) -> dict:
    """A Tulu-like instruction mixture: one or two turns, each a toy task in its instruct format.

    A turn whose task record is in ``held_out`` (task type -> record keys: the eval sets'
    scored and few-shot items) is drawn again, so instruction tuning never sees a test item.
    """
    from ptft.data.prompts import completion, render_prompt
    from ptft.data.tasks import TASK_TYPES

    messages, names = [], []
    for _ in range(rng.choice((1, 1, 2))):
        name = _pick(rng, sorted(TASK_GENERATORS))
        task = TASK_TYPES[name]
        while True:
            record = TASK_GENERATORS[name](rng, domain)
            if record_key(task, record) not in (held_out or {}).get(name, set()):
                break
        messages += [
            {"role": "user", "content": render_prompt(task, record, "instruct").strip()},
            {"role": "assistant", "content": completion(task, record)},
        ]
        names.append(name)
    return {"dataset": "toy_" + "+".join(names), "id": "", "messages": messages}


def document(rng: random.Random, domain: str) -> dict:
    from ptft.toy.docs import document as toy_document

    return toy_document(rng, domain)


def preference(rng: random.Random, domain: str) -> dict:
    """A preference pair: {prompt, chosen, rejected} (ptft.toy.preference; imported here lazily, as
    ``document`` is, so that module may use this one's helpers)."""
    from ptft.toy.preference import preference as toy_preference

    return toy_preference(rng, domain)


# Preference pairs stay out of TASK_GENERATORS: those are the chat mixture's tasks (and its draws).
GENERATORS = {**TASK_GENERATORS, "chat": chat, "document": document, "preference": preference}
