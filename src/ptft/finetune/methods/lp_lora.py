"""``lp_lora``: linear probing, then LoRA (Tomihari & Sato 2024): the head fitted first, then adapters and head train.

The head is fitted as :mod:`.lp` fits it; then :mod:`.lora`'s adapters are added, and the head
stays trainable beside them (``peft``'s sequence-classification task keeps it as a module to save).
"""

from __future__ import annotations

from dataclasses import dataclass

from ptft.finetune.methods.base import RunInputs
from ptft.finetune.methods.lora import LoRA, LoraConfig
from ptft.finetune.methods.lp import HEAD_KINDS, LpConfig, fit_head


@dataclass(frozen=True)
class LpLoraConfig(LoraConfig, LpConfig):
    """``finetune.lp_lora``: the adapters' settings (as ``finetune.lora``) and the probe's (as ``finetune.lp``)."""


class LPLoRA(LoRA):
    name = "lp_lora"
    task_kinds = HEAD_KINDS
    config = LpLoraConfig

    def prepare(self, model, run: RunInputs):
        stats = {} if run.resuming else fit_head(model, run, run.cfg[self.name])  # resuming: the state has the head
        model, more = super().prepare(model, run)
        return model, {**stats, **more}
