"""Task types: what a task's fields are, how its prompt formats read, what it predicts.

The format strings are those of Amuro & Char (Table 4, see docs/studies.md);
``{field}`` placeholders name canonical fields, which each dataset maps its columns onto.
Adding a task type is one entry in ``TASK_TYPES``; its kind must have a scorer
(:mod:`ptft.evaluate.scorers`) for it to be evaluated, and that scorer's first metric is the
task type's default metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptft.evaluate.scorers import default_metric


@dataclass(frozen=True)
class TaskType:
    name: str
    kind: str  # "classification", "generation", "multiple_choice", "chat", "text" or "preference"
    fields: tuple[str, ...]  # canonical input fields, none of them may be empty
    formats: dict[str, str]
    labels: tuple[str, ...] = ()  # label words, classification only
    target: str = "label"  # canonical field holding the completion (or, with ``target_index``, the choices)
    metric: str = field(default="")  # primary metric; default: the first its kind's scorer produces
    optional_fields: tuple[str, ...] = ()  # canonical fields that may be empty (e.g. a missing third answer)
    extra_metrics: tuple[str, ...] = ()  # further per-example metrics reported beside ``metric``
    # Canonical field holding the gold's index into ``labels`` or, for a task without label words, into
    # the record's ``target`` list; empty: ``target`` holds the completion itself (ptft.data.prompts.completion).
    target_index: str = ""

    def __post_init__(self):
        object.__setattr__(self, "metric", self.metric or default_metric(self.kind))

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics a result of this task reports, primary first; none for a kind that is not scored."""
        return tuple(m for m in (self.metric, *self.extra_metrics) if m)


TASK_TYPES = {
    "nli": TaskType(
        name="nli",
        kind="classification",
        fields=("premise", "hypothesis"),
        labels=("entailment", "neutral", "contradiction"),
        target_index="label",
        formats={
            "default": "### Input_1: {premise}\n ### Input_2: {hypothesis}\n ### Inference: ",
            "instruct": "Consider the following texts: Text 1: {premise} Text 2: {hypothesis} The relation is ",
            "io": "{premise} {hypothesis}",
        },
    ),
    "paraphrase": TaskType(
        name="paraphrase",
        kind="classification",
        fields=("sentence1", "sentence2"),
        labels=("no", "yes"),
        target_index="label",
        formats={
            "default": "### Input_1: {sentence1}\n ### Input_2: {sentence2}\n ### Paraphrase Classification: ",
            "instruct": "Let's compare the two sentences: Sentence_1: {sentence1} Sentence_2: {sentence2} "
            "Are they paraphrasing?: ",
            "io": "{sentence1} {sentence2}",
        },
    ),
    "summary": TaskType(
        name="summary",
        kind="generation",
        fields=("document",),
        target="summary",
        formats={
            "default": "### Input: {document}\n ### Summary: ",
            "instruct": "Please read the following text: {document} Provide a summary: ",
            "io": "{document}",
        },
    ),
    "question_generation": TaskType(
        name="question_generation",
        kind="generation",
        fields=("context", "answerA", "answerB", "answerC"),
        # TweetQA has one answer per tweet: its second and third answers render empty.
        optional_fields=("answerB", "answerC"),
        target="question",
        formats={
            # "{answerB}Answer C" without a space is the paper's string, kept exact.
            "default": "### Input: {context}\n ### Answer: Answer A: {answerA} Answer B: {answerB}"
            "Answer C: {answerC}\n ### Question: ",
            "instruct": "Given the context: {context} And the answer: Answer A: {answerA} Answer B: {answerB} "
            "Answer C: {answerC} Generate a suitable question: ",
            "io": "{context} {answerA} {answerB} {answerC}",
        },
    ),
    # lm-evaluation-harness style: the dataset's converter builds ``query`` (its doc_to_text) and
    # ``choices``; each choice is scored as the continuation " " + choice. One format only.
    "multiple_choice": TaskType(
        name="multiple_choice",
        kind="multiple_choice",
        fields=("query",),
        target="choices",
        target_index="label",
        extra_metrics=("acc_norm",),
        formats={"default": "{query}"},
    ),
    # Instruction tuning on chat transcripts (Tulu v2): ``messages`` is a list of {role, content}.
    "chat": TaskType(name="chat", kind="chat", fields=("messages",), target="messages", formats={"default": ""}),
    # Plain documents (continued pre-training on a corpus, as in Zhang & Wu's Dissecting study):
    # no prompt, the loss is on every token of ``text``. Not scored by the evaluation engine;
    # the Dissecting analysis measures such models (ptft.derive.dissect).
    "text": TaskType(name="text", kind="text", fields=(), target="text", formats={"default": ""}),
    # Preference pairs (Ren & Sutherland's learning dynamics: SFT on ``chosen``, DPO on both): the
    # dataset's converter builds the whole ``prompt`` (HH's transcript, UltraFeedback's "Human: ...
    # Assistant:"), the responses follow it. ``chosen`` is the completion (SFT's target). Not scored
    # by the evaluation engine: the learning-dynamics probes measure such models.
    "preference": TaskType(
        name="preference",
        kind="preference",
        fields=("prompt", "chosen", "rejected"),
        target="chosen",
        formats={"default": "{prompt}"},
    ),
}

FORMATS = ("default", "instruct", "io")
