"""``full``: every parameter trains, on any task but a chat (the :class:`~ptft.finetune.methods.Method` defaults)."""

from __future__ import annotations

from ptft.finetune.methods.base import Method

# Every task kind of ptft.data.tasks but "chat", which is instruction tuning's. On a preference
# task, supervised fine-tuning trains on the chosen response (Method.encode).
LABELLED_KINDS = ("classification", "sequence_classification", "generation", "multiple_choice", "text", "preference")


class Full(Method):
    name = "full"
    task_kinds = LABELLED_KINDS
