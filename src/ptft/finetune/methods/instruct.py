"""``instruct``: every parameter trains, on a chat dataset.

The loss is on the assistant turns only: :func:`ptft.finetune.batching.encode_examples` labels
every other token as ignored, so the method itself needs nothing beyond the defaults.
"""

from __future__ import annotations

from ptft.finetune.methods.base import Method


class Instruct(Method):
    name = "instruct"
    task_kinds = ("chat",)
