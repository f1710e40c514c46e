"""Fine-tuning methods, one module per method, looked up by name.

A method is what a fine-tuning run does outside the shared loop of :mod:`ptft.finetune.train`:
the task kinds it accepts (:meth:`Method.check_task`), its config block ``finetune.<name>`` as a
dataclass of typed, documented fields (:meth:`Method.parse_config`), how it prepares the model
before the loop (:meth:`Method.prepare`), its loss (:meth:`Method.loss`) and how it saves the
result (:meth:`Method.save`).

- ``full`` (:mod:`.full`): every parameter trains.
- ``lora`` (:mod:`.lora`): low-rank adapters; only they train; saved merged or as the adapter.
- ``lpft`` (:mod:`.lpft`): linear probing of the label rows of the LM head, then full fine-tuning.
- ``instruct`` (:mod:`.instruct`): every parameter trains, on a chat dataset.
- ``dpo`` (:mod:`.dpo`): direct preference optimisation on preference pairs, from a reference model.
- ``extend`` (:mod:`.extend`): supervised fine-tuning on the chosen and the rejected responses.
- ``lp`` (:mod:`.lp`): a classifier head fitted by cross-validated logistic regression on frozen features.
- ``lp_lora`` (:mod:`.lp_lora`): that head first, then LoRA adapters and the head train.

Adding a method is one module with a :class:`Method` subclass, listed below for registration.
"""

from ptft.finetune.methods.base import (
    Method,
    RunInputs,
    get_method,
    help_texts,
    parse_block,
    register,
    registered,
    trainable_names,
    unwrap,
)
from ptft.finetune.methods.dpo import DPO, DpoConfig
from ptft.finetune.methods.extend import Extend
from ptft.finetune.methods.full import Full
from ptft.finetune.methods.instruct import Instruct
from ptft.finetune.methods.lora import LoRA, LoraConfig, apply_lora
from ptft.finetune.methods.lp import LP, LpConfig
from ptft.finetune.methods.lp_lora import LPLoRA, LpLoraConfig
from ptft.finetune.methods.lpft import LPFT, LpftConfig

# Registration order is the order of METHOD_NAMES, the command line's choices.
for _method in (Full, LoRA, LPFT, Instruct, DPO, Extend, LP, LPLoRA):
    register(_method)
METHOD_NAMES = registered()

__all__ = [
    "DPO",
    "METHOD_NAMES",
    "DpoConfig",
    "Extend",
    "Full",
    "Instruct",
    "LP",
    "LPFT",
    "LPLoRA",
    "LoRA",
    "LoraConfig",
    "LpConfig",
    "LpLoraConfig",
    "LpftConfig",
    "Method",
    "RunInputs",
    "apply_lora",
    "get_method",
    "help_texts",
    "parse_block",
    "register",
    "registered",
    "trainable_names",
    "unwrap",
]
