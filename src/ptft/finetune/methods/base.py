"""The :class:`Method` interface, its registry, and strict parsing of a method's config block.

This module and the method modules import no ``torch`` at module level: the plan and the
command-line parser look methods up, and neither should wait seconds for ``torch`` to load.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

_REGISTRY: dict[str, Method] = {}


def unwrap(model):
    """The ``transformers`` model inside a ``peft`` wrapper (its LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@dataclass(frozen=True)
class RunInputs:
    """What :meth:`Method.prepare` may use besides the model."""

    tokenizer: Any
    task: Any  # ptft.data.tasks.Task
    records: list[dict]  # the training records
    cfg: dict  # the run's finetune config (the method's own block under its name)
    device: str
    resuming: bool  # a saved training state will be loaded over the prepared model
    examples: list = dataclasses.field(default_factory=list)  # the encoded training examples (Method.encode)
    validation_examples: list = dataclasses.field(default_factory=list)
    state_dir: Any = None  # the run's state folder (pathlib.Path), for what prepare computes once and keeps


class Method:
    """A fine-tuning method: the tasks it trains on, its settings, and what it does around the shared loop.

    The defaults are full fine-tuning: the model as loaded, every parameter trained with
    :func:`ptft.finetune.loss.completion_loss`, saved as a plain checkpoint.
    """

    name: ClassVar[str]
    task_kinds: ClassVar[tuple[str, ...]]  # the task kinds (ptft.data.tasks) it accepts
    config: ClassVar[type | None] = None  # dataclass of its block ``finetune.<name>``; None: it has none
    trains: ClassVar[bool] = True  # False: prepare makes the result, the loop runs no step (lp)

    def check_task(self, task: str, kind: str) -> None:
        """Raise ``ValueError`` if this method cannot train on task ``task`` of kind ``kind``."""
        if kind not in self.task_kinds:
            raise ValueError(self.refusal(task, kind))

    def refusal(self, task: str, kind: str) -> str:
        need = _or_list([m.name for m in _REGISTRY.values() if kind in m.task_kinds])
        return f"finetune.methods: task {task!r} needs method {need}, got {self.name!r}"

    def parse_config(self, block: dict | None, where: str) -> dict:
        """``block`` (the settings at config path ``where``) with every default filled, in field order."""
        if self.config is None:
            if block:
                raise ValueError(f"{where}: method {self.name!r} takes no settings")
            return {}
        return parse_block(self.config, block, where)

    def encode(self, tokenizer, dataset, records: list[dict], cfg: dict) -> list:
        """The training examples of ``records`` (of ``dataset``, a registry entry): ``(input_ids, labels)`` each.

        A preference task trains on the prompt and its chosen response, cut by the release's length
        rules (:func:`ptft.finetune.batching.encode_responses`).
        """
        from ptft.finetune.batching import encode_examples

        if dataset.task.kind == "sequence_classification":
            return encode_classes(tokenizer, dataset.task, records, cfg["max_length"])
        if dataset.task.kind == "preference":
            return [r["chosen"] for r in self.encode_responses(tokenizer, dataset, records, cfg, ("chosen",))]
        return encode_examples(tokenizer, dataset.task, records, cfg["format"], cfg["max_length"])

    @staticmethod
    def encode_responses(tokenizer, dataset, records: list[dict], cfg: dict, fields: tuple[str, ...]) -> list[dict]:
        from ptft.finetune.batching import encode_responses

        keep = getattr(dataset, "prompt_keep", "end")
        return encode_responses(tokenizer, dataset.task, records, cfg["format"], cfg["max_length"],
                                cfg.get("max_prompt_length"), keep, fields)  # fmt: skip

    def prepare(self, model, run: RunInputs) -> tuple[Any, dict]:
        """The model to train (``model`` itself or a wrapper of it) and statistics for ``summary.json``."""
        return model, {}

    def loss(self, model, batch: dict, fast: bool, kept=None):
        """Summed loss of one micro-batch; the loop divides it by the step's number of target tokens."""
        from ptft.finetune.loss import completion_loss

        return completion_loss(model, batch, fast, kept)

    def save(self, path, model, tokenizer, cfg: dict, base_checkpoint) -> None:
        """Write the fine-tuned model to ``path`` as a ``save_pretrained`` folder (atomically),
        recording the checkpoint it was fine-tuned from (``ptft_provenance.json``)."""
        from ptft import io

        io.write_pretrained(path, model, tokenizer, origin(base_checkpoint))


def encode_classes(tokenizer, task, records: list[dict], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Examples of a classifier head: the input template's tokens, and labels holding the class at the last position.

    The one non-ignored label makes the example count once in a step's normalisation, as one
    target token does, so the shared loop, batching and validation take it unchanged.
    """
    from ptft.data.prompts import render_prompt
    from ptft.finetune.batching import IGNORE
    from ptft.finetune.heads import encode_inputs

    ids = encode_inputs(tokenizer, [render_prompt(task, r, "default") for r in records], max_length)
    return [(x, [IGNORE] * (len(x) - 1) + [int(r["label"])]) for x, r in zip(ids, records, strict=True)]


def origin(base_checkpoint) -> dict | None:
    """The provenance of a model fine-tuned from ``base_checkpoint`` (a pointer or folder)."""
    from ptft import provenance

    return provenance.for_model(base_checkpoint) if base_checkpoint is not None else None


def register(cls: type[Method]) -> type[Method]:
    """Make ``cls`` available to :func:`get_method` under ``cls.name``; usable as a class decorator."""
    if cls.name in _REGISTRY:
        raise ValueError(f"fine-tuning method {cls.name!r} is registered twice")
    if cls.config is not None and not dataclasses.is_dataclass(cls.config):
        raise TypeError(f"method {cls.name!r}: config must be a dataclass")
    _REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise ValueError(f"finetune.methods: unknown method {name!r}; allowed: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def registered() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return tuple(_REGISTRY)


def parse_block(config: type, block: dict | None, where: str) -> dict:
    """``block`` checked against the fields of dataclass ``config``, every default filled in field order.

    An unknown key or a value of another type than the field's raises ``ValueError`` naming its
    path. An int passes where a float is expected (and is kept an int); a bool is no number.
    """
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise ValueError(f"{where}: expected a mapping, got {block!r}")
    fields = dataclasses.fields(config)
    names = [f.name for f in fields]
    for key in block:
        if key not in names:
            raise ValueError(f"{where}.{key}: unknown key; allowed: {', '.join(names)}")
    hints = typing.get_type_hints(config)
    out = {}
    for f in fields:
        value = block.get(f.name, f.default)
        if not _matches(value, hints[f.name]):
            raise ValueError(f"{where}.{f.name}: expected {_type_name(hints[f.name])}, got {value!r}")
        _check_range(value, f.metadata, f"{where}.{f.name}")
        out[f.name] = value
    return out


def _check_range(value, bounds, where: str) -> None:
    """A number within the field's ``minimum``, ``maximum`` and ``exclusive_minimum`` (its metadata)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if "minimum" in bounds and value < bounds["minimum"]:
        raise ValueError(f"{where}: {value!r} is less than the minimum {bounds['minimum']}")
    if "maximum" in bounds and value > bounds["maximum"]:
        raise ValueError(f"{where}: {value!r} is more than the maximum {bounds['maximum']}")
    if "exclusive_minimum" in bounds and value <= bounds["exclusive_minimum"]:
        raise ValueError(f"{where}: {value!r} must be more than {bounds['exclusive_minimum']}")


def help_texts(config: type) -> dict[str, str]:
    """Each field's help text (``metadata["help"]``) of a method's config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config)}


def _matches(value, tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if isinstance(value, bool):
        return tp is bool
    if tp is float:
        return isinstance(value, int | float)
    if tp is type(None):
        return value is None
    return isinstance(value, tp)


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    return "null" if tp is type(None) else tp.__name__


def _or_list(names: list[str]) -> str:
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else "(none)"
