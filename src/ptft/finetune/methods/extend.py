"""``extend``: supervised fine-tuning on the chosen *and* the rejected response of each preference pair.

Ren & Sutherland's mitigation of the squeezing effect: SFT on both responses first raises the
rejected response's probability, so the negative gradient DPO then puts on it no longer falls on
a response deep in the tail, and less probability mass is squeezed onto the argmax tokens.
"""

from __future__ import annotations

from ptft.finetune.methods.base import Method


class Extend(Method):
    name = "extend"
    task_kinds = ("preference",)

    def encode(self, tokenizer, dataset, records: list[dict], cfg: dict) -> list:
        pairs = self.encode_responses(tokenizer, dataset, records, cfg, ("chosen", "rejected"))
        return [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
