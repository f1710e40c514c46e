"""Rendering records into (prompt, completion) pairs and few-shot prompts."""

from __future__ import annotations

from collections.abc import Sequence

from ptft.data.tasks import TaskType

SHOT_SEPARATOR = "\n\n"


class Prompt(str):
    """A few-shot prompt that knows where its parts begin.

    ``part_starts``: the character offset of each few-shot example and, last, of the query.
    Scoring cuts an over-long prompt at these offsets (oldest examples first) so that the query
    stays whole (:func:`ptft.evaluate.encoding.fit_to_window`). It compares, hashes and
    serialises as the plain string.
    """

    part_starts: tuple[int, ...]

    def __new__(cls, text: str, part_starts: Sequence[int] = (0,)):
        self = super().__new__(cls, text)
        self.part_starts = tuple(part_starts)
        return self

    def __reduce__(self):
        return (Prompt, (str(self), self.part_starts))


def render_prompt(task: TaskType, record: dict, fmt: str) -> str:
    try:
        template = task.formats[fmt]
    except KeyError:
        raise KeyError(f"task type {task.name!r} has no prompt format {fmt!r}") from None
    return template.format(**{f: record[f] for f in task.fields})


def completion(task: TaskType, record: dict) -> str:
    """The gold completion: ``record[task.target]``, or the entry ``record[task.target_index]`` indexes
    among the task's label words (classification) or, without label words, in the ``target`` list (choices)."""
    if not task.target_index:
        return str(record[task.target])
    options = task.labels or record[task.target]
    return str(options[int(record[task.target_index])])


def chat_segments(messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """A chat transcript in the Tulu v2 template, as (text, trained on) pieces.

    ``<|system|>``/``<|user|>``/``<|assistant|>`` tags each on their own line; only assistant
    replies are trained on (the EOS after each is added by the tokenizing code).
    """
    pieces = []
    for m in messages:
        if m["role"] == "assistant":
            pieces += [("<|assistant|>\n", False), (m["content"].strip(), True), ("\n", False)]
        else:
            pieces.append((f"<|{m['role']}|>\n{m['content'].strip()}\n", False))
    return pieces


def join_prompt_completion(prompt: str, target: str) -> tuple[str, str]:
    """Move the boundary whitespace onto the completion, inserting a space if neither side has one.

    Prompts end in a space ("### Inference: "), which a byte-level BPE would make a token of
    its own that never precedes a word in running text. Moving it onto the completion keeps
    the prompt's tokens identical at training and scoring time (as lm-evaluation-harness does
    with its target delimiter) and makes the label a single " word" token.
    """
    stripped = prompt.rstrip()
    gap = prompt[len(stripped) :]
    if not gap and not target[:1].isspace():
        gap = " "
    return stripped, gap + target


def few_shot_prompt(task: TaskType, shots: Sequence[dict], query: dict, fmt: str) -> Prompt:
    """k solved examples then the query, separated by blank lines; the result is stripped on the right.

    The result is a :class:`Prompt`: it records where each example and the query begin.
    """
    parts = []
    for shot in shots:
        prompt, target = join_prompt_completion(render_prompt(task, shot, fmt), completion(task, shot))
        parts.append(prompt + target)
    prompt, _ = join_prompt_completion(render_prompt(task, query, fmt), completion(task, query))
    parts.append(prompt)
    starts, at = [], 0
    for part in parts:
        starts.append(at)
        at += len(part) + len(SHOT_SEPARATOR)
    return Prompt(SHOT_SEPARATOR.join(parts), starts)
