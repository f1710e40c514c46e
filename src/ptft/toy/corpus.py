"""The toy pre-training corpus.

A mixture of plain stories about the toy world and, for the "pre-training-learnable" task
types only, solved task examples in the study's prompt formats, as web text contains
benchmark-like data. Task types left out of the mixture (paraphrase, question generation)
never occur in pre-training, so a base model can only guess them until fine-tuned.
Items of the scored and few-shot splits are never put into the corpus.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from ptft.data.prompts import SHOT_SEPARATOR, completion, join_prompt_completion, render_prompt
from ptft.data.tasks import FORMATS, TASK_TYPES
from ptft.toy import world as w
from ptft.toy.tasks import GENERATORS


def story(rng: random.Random) -> str:
    domain = rng.choice(("home", "wild"))
    parts = [GENERATORS["summary"](rng, domain)["document"]]
    for _ in range(rng.randint(1, 3)):
        obj = rng.choice(w.OBJECTS[rng.choice(("home", "wild"))])
        name = rng.choice(w.NAMES)
        parts.append(
            rng.choice(
                (
                    f"the {obj} is {rng.choice(w.ALL_ADJECTIVES)} .",
                    f"{name} {rng.choice(w.ALL_VERBS)} the {obj} .",
                    f"{name} was {rng.choice(w.MOODS)} .",
                )
            )
        )
    return " ".join(parts)


def solved_examples(rng: random.Random, task_type: str, exclude: set[tuple], domain: str = "home") -> str:
    """1–4 solved examples of one task type, each in a randomly chosen prompt format."""
    task = TASK_TYPES[task_type]
    generator = GENERATORS[task_type]
    parts: list[str] = []
    n = rng.randint(1, 4)
    while len(parts) < n:
        record = generator(rng, domain)
        if tuple(record[f] for f in task.fields) in exclude:
            continue
        prompt, target = join_prompt_completion(
            render_prompt(task, record, rng.choice(FORMATS)), completion(task, record)
        )
        parts.append(prompt + target)
    return SHOT_SEPARATOR.join(parts)


def documents(mix: dict[str, float], seed: int, exclude: dict[str, set[tuple]]) -> Iterator[str]:
    """An endless, seeded stream of documents drawn from the mixture ``{kind: weight}``.

    ``kind`` is ``story`` or a task type; ``exclude`` maps a task type to record keys that
    must not appear (the scored and few-shot items).
    """
    rng = random.Random(f"corpus:{seed}")
    kinds = sorted(mix)
    weights = [mix[k] for k in kinds]
    for kind in kinds:
        if kind != "story" and kind not in TASK_TYPES:
            raise KeyError(f"corpus mix: unknown document kind {kind!r}")
    while True:
        kind = rng.choices(kinds, weights)[0]
        if kind == "story":
            yield story(rng)
        else:
            yield solved_examples(rng, kind, exclude.get(kind, set()))


def tokenizer_extra_texts(repeat: int = 20) -> list[str]:
    """Words the tokenizer should know although pre-training never shows them.

    A real tokenizer is trained on far more text than one model's pre-training corpus; this
    gives the toy one the label words, prompt words and question words of every task type,
    so that e.g. " yes" is one token, as it is for OLMo or Pythia.
    """
    words = {"who", "what", "where", "does", "?"}
    for task in TASK_TYPES.values():
        if task.kind == "preference":  # added after the toy suites were built: their tokenizers stay as they were
            continue
        words.update(task.labels)
        for template in task.formats.values():
            words.update(part for part in template.replace("{", " ").replace("}", " ").split())
    # Each word both at the start of a text and after a space: "yes" and " yes" become tokens.
    return [" ".join(sorted(words)), *sorted(words)] * repeat
