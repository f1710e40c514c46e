"""``lora``: low-rank adapters from ``peft`` on the configured modules; only adapter parameters train.

The result is saved merged into the base weights (a plain checkpoint that every stage loads)
or as the adapter alone (``lora.save: adapter``), which
:func:`ptft.checkpoints.load.load_pretrained` loads on top of its base checkpoint. Saving leaves
the model as it is, so that a snapshot mid-training (:mod:`ptft.finetune.snapshots`) does not
change what trains next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ptft.finetune.methods.base import Method, RunInputs, origin
from ptft.finetune.methods.full import LABELLED_KINDS


@dataclass(frozen=True)
class LoraConfig:
    """``finetune.lora`` (and ``finetune.per_task.<task>.lora``)."""

    r: int = field(default=8, metadata={"help": "rank of the adapter matrices", "minimum": 1})
    alpha: float = field(
        default=16,
        metadata={"help": "scaling: the adapters' product is multiplied by alpha / r", "exclusive_minimum": 0},
    )
    dropout: float = field(
        default=0.05, metadata={"help": "dropout on the adapters' input", "minimum": 0, "maximum": 1}
    )
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": 'module names (or peft\'s "all-linear") that get adapters'}
    )
    save: Literal["merged", "adapter"] = field(
        default="merged",
        metadata={"help": "merged = adapters merged into the weights for evaluation; adapter = saved and evaluated "
                          "as adapters"},
    )  # fmt: skip


def apply_lora(model, lora: dict):
    """Wrap ``model`` with LoRA adapters; every other parameter is frozen by ``peft``."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = PeftLoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        bias="none",
        # A classifier's head trains beside the adapters: peft keeps it as a module to save for this task type.
        task_type="SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


class LoRA(Method):
    name = "lora"
    task_kinds = LABELLED_KINDS
    config = LoraConfig

    def prepare(self, model, run: RunInputs):
        model = apply_lora(model, run.cfg[self.name])
        if run.cfg["gradient_checkpointing"]:
            # The frozen embeddings' output needs a gradient for checkpointed layers to backpropagate.
            model.enable_input_require_grads()
        return model, {}

    def save(self, path, model, tokenizer, cfg: dict, base_checkpoint) -> None:
        from ptft import io

        if cfg[self.name]["save"] == "merged":
            io.write_pretrained(path, merged_copy(model), tokenizer, origin(base_checkpoint))
            return
        base, revision = base_source(base_checkpoint)
        # peft and lm-eval load an adapter's base from these fields; without a revision they would
        # take the hub's main branch, not the commit that was fine-tuned.
        for adapter in model.peft_config.values():
            adapter.base_model_name_or_path, adapter.revision = base, revision

        def fill(tmp):
            # ptft never resizes the vocabulary; "auto" would ask the hub whether the base's did,
            # a network call from a compute node (and a wait where there is no network).
            model.save_pretrained(tmp, save_embedding_layers=False)
            tokenizer.save_pretrained(tmp)
            record = {"base_checkpoint": str(base_checkpoint), "base_model": base, "base_revision": revision}
            io.write_json(tmp / "ptft_adapter.json", record)
            io.write_provenance(tmp, origin(base_checkpoint))

        io.write_dir(path, fill)


def merged_copy(model):
    """The adapters of peft model ``model`` merged into a copy of its base model, on the CPU.

    ``merge_and_unload`` merges in place, which would change a model that is still training.
    The copy's tensors are made on the CPU and handed to ``deepcopy`` through its memo (which
    then takes them instead of copying the originals): a second copy of the weights on the
    accelerator could run it out of memory.
    """
    import copy

    import torch

    memo = {id(p): torch.nn.Parameter(p.detach().to("cpu", copy=True), p.requires_grad) for p in model.parameters()}
    memo |= {id(b): b.detach().to("cpu", copy=True) for b in model.buffers()}
    return copy.deepcopy(model, memo).merge_and_unload()


def base_source(base_checkpoint) -> tuple[str, str | None]:
    """(hub id or folder, commit or None) that ``from_pretrained`` loads a checkpoint pointer or folder from."""
    from ptft.checkpoints.load import pretrained_source

    name, kwargs = pretrained_source(base_checkpoint)
    return name, kwargs.get("revision")
