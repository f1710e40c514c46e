"""Sequence classifiers with one linear head, the features it reads, and their inputs.

Tomihari & Sato (2024) analyse LP-FT on a classifier whose head is *one* linear layer on a
pooled feature: linear probing fits that layer on frozen features, and the analysis (feature
change, head norm) is about the map ``logits = W h + b``. ``transformers``' heads are not all
like that:

- **Decoders** (GPT-NeoX/Pythia, LLaMA, GPT-2 and the others built on ``score``) already are:
  ``score`` is one linear layer applied to the final hidden state of the last non-padding token.
  They only need a pad token, which Pythia and LLaMA ship without: the tokenizer pads with EOS
  (or UNK) and ``config.pad_token_id`` is set to it, since ``transformers`` pools the rightmost
  token that is not ``pad_token_id``.
- **RoBERTa and its relatives** have ``dense -> tanh -> out_proj`` on the first token (``<s>``).
  The study removes ``dense`` and ``tanh`` and keeps the dropout (0.1) in front of ``out_proj``.
  The replacement keeps ``out_proj`` where it was, so the parameter names
  ``classifier.out_proj.weight/bias`` (and a saved state dict) stay the same, and it is recorded
  as ``config.ptft_head = "linear"`` so that loading a saved folder rebuilds the same model.
- BERT (pooler + classifier), DistilBERT (pre_classifier + classifier), ELECTRA (GELU head) and
  the other encoders are not converted: ``head="linear"`` refuses them by name rather than
  training a different model than asked for; ``head="standard"`` loads them as ``transformers``
  builds them.

:func:`pooled_features` reads the head's input with a hook on :func:`head_layer` instead of
re-implementing each family's pooling, so it is the very tensor the logits were computed from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ptft.checkpoints.load import _load_tokenizer, _readable_weights, check_folder, pretrained_source
from ptft.finetune.methods.base import unwrap

HEADS = ("linear", "standard")
# Model types whose classifier is RobertaClassificationHead's copy: x = out_proj(drop(tanh(dense(drop(h[:, 0]))))).
ROBERTA_FAMILY = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
    "roberta-prelayernorm",
)


class LinearHead(nn.Module):
    """Dropout, then ``out_proj``, on the first token's final hidden state: RoBERTa's head without dense + tanh."""

    def __init__(self, out_proj: nn.Linear, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = out_proj

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out_proj(self.dropout(features[:, 0, :]))


def load_classifier(source, num_labels: int, head: str = "linear", dropout: float = 0.1, dtype=None,
                    device="cpu", id2label=None):  # fmt: skip
    """(model, tokenizer): ``AutoModelForSequenceClassification`` of a checkpoint folder, pointer or hub id.

    ``head="linear"`` gives RoBERTa-family encoders one linear head (see the module docstring);
    decoders' ``score`` already is one. ``head="standard"`` keeps ``transformers``' head. A folder
    saved from a classifier keeps the head and the number of labels it was saved with: one with
    ``config.ptft_head == "linear"`` loads with the linear head whatever ``head`` says, and
    ``num_labels`` must equal the saved number. ``dropout`` is the linear head's (not recorded
    weights, so it is taken from the argument on every load). The tokenizer pads on the right and
    always has a pad token, which is the model's ``pad_token_id`` for last-token pooling.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if head not in HEADS:
        raise ValueError(f"head: expected one of {', '.join(HEADS)}, got {head!r}")
    name, kwargs = pretrained_source(source)
    if Path(name).is_dir() or "revision" not in kwargs:
        check_folder(name, None if Path(name) == Path(source) else f"checkpoint pointer {source}")
        if (Path(name) / "ptft_adapter.json").exists():
            raise ValueError(f"{name}: a LoRA adapter folder; load_classifier takes a full save_pretrained folder")
    if kwargs.pop("trust_remote_code", False):
        raise ValueError(f"{source}: needs remote code; load_classifier loads transformers' own classes only")
    kwargs["trust_remote_code"] = False

    config = AutoConfig.from_pretrained(name, **kwargs)
    saved_head = _saved_head(config)
    if saved_head is not None:
        if config.num_labels != num_labels:
            raise ValueError(
                f"{name}: a classifier saved with {config.num_labels} labels, asked for num_labels={num_labels}; "
                "its head cannot be reused for another number of labels (start from the pre-trained checkpoint)"
            )
        if head == "linear" and saved_head == "standard" and config.model_type in ROBERTA_FAMILY:
            raise ValueError(
                f"{name}: a {config.model_type} classifier saved with the standard head (dense + tanh + out_proj); "
                "head='linear' would drop its trained dense layer: load it with head='standard'"
            )
        head = saved_head
    config.num_labels = num_labels
    if id2label is not None:
        labels = dict(enumerate(id2label)) if not isinstance(id2label, Mapping) else id2label
        labels = {int(k): str(v) for k, v in labels.items()}
        if sorted(labels) != list(range(num_labels)):
            raise ValueError(f"id2label: expected the ids 0..{num_labels - 1}, got {sorted(labels)}")
        config.id2label = labels
        config.label2id = {v: k for k, v in labels.items()}

    with _readable_weights(name, kwargs):
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            name, config=config, dtype=dtype, output_loading_info=True, **kwargs
        )
    if head == "linear":
        # A linear-head folder has no classifier.dense: transformers' load report lists it as missing, and it goes here.
        _to_linear_head(model, dropout)
    if saved_head is not None:
        _check_head_loaded(model, loading["missing_keys"], name)
    model.config.ptft_head = head
    model = model.to(device)

    tokenizer = _load_tokenizer(name, {k: v for k, v in kwargs.items() if k != "trust_remote_code"})
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        fill = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fill is None:
            raise ValueError(f"{name}: its tokenizer has no pad, EOS or UNK token to pad with")
        tokenizer.pad_token = fill
    text_config = model.config.get_text_config()
    # Decoders pool the rightmost token that is not pad_token_id: it must be what collate pads with.
    # Encoders are left alone: RoBERTa's padding_idx of the position ids is the config's pad id.
    if _is_last_token_pooled(model) and text_config.pad_token_id != tokenizer.pad_token_id:
        text_config.pad_token_id = tokenizer.pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _saved_head(config) -> str | None:
    """The head a saved classifier was saved with ("linear" or "standard"); None for a pre-trained checkpoint."""
    head = getattr(config, "ptft_head", None)
    if head is not None:
        if head not in HEADS:
            raise ValueError(f"config.ptft_head: expected one of {', '.join(HEADS)}, got {head!r}")
        return head
    if any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        return "standard"
    return None


def _check_head_loaded(model, missing_keys, name: str) -> None:
    """Raise if a saved classifier's head weights were not in its folder (transformers would train from random)."""
    layer = head_layer(model)
    names = {n for n, p in model.named_parameters() if p is layer.weight or p is layer.bias}
    lost = sorted(names & set(missing_keys))
    if lost:
        raise ValueError(
            f"{name}: a classifier folder without the weights of its head ({', '.join(lost)}); "
            "copy the complete folder that save_pretrained wrote"
        )


def _is_last_token_pooled(model) -> bool:
    return isinstance(getattr(unwrap(model), "score", None), nn.Module)


def _to_linear_head(model, dropout: float) -> None:
    """Replace a RoBERTa-family head by :class:`LinearHead` (in place); nothing to do for a decoder's ``score``."""
    if _is_last_token_pooled(model):
        return
    model_type = model.config.model_type
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, LinearHead):
        return
    known = model_type in ROBERTA_FAMILY and isinstance(getattr(classifier, "out_proj", None), nn.Linear)
    if not known or not hasattr(classifier, "dense"):
        raise ValueError(
            f"head='linear' is not supported for {type(model).__name__} (model_type {model_type!r}): its head is "
            f"more than one linear layer; supported: the RoBERTa family ({', '.join(ROBERTA_FAMILY)}) and decoders "
            "whose head is `score`; use head='standard' to keep transformers' head"
        )
    # A new module is in training mode; the loaded model is in eval mode (its dropout off).
    model.classifier = LinearHead(classifier.out_proj, dropout).train(model.training)


def head_layer(model) -> nn.Linear:
    """The linear layer that maps the pooled feature to the logits (through a ``peft`` wrapper too).

    ``score`` for decoders, ``classifier.out_proj`` for the RoBERTa family (either head),
    ``classifier`` where that is itself one linear layer (BERT, DistilBERT with ``head="standard"``).
    """
    base = unwrap(model)
    for path in ("score", "classifier.out_proj", "classifier"):
        module = base
        for part in path.split("."):
            # getattr, not get_submodule: peft's ModulesToSaveWrapper forwards attributes to the trained copy.
            module = getattr(module, part, None)
        if module is not None:
            return _active_linear(module, type(base).__name__, path)
    raise ValueError(f"{type(base).__name__}: no classification head (score, classifier.out_proj or classifier)")


def _active_linear(module, model_name: str, path: str) -> nn.Linear:
    """The ``nn.Linear`` that computes the logits: peft's trained copy of a module it saves, or the module."""
    if hasattr(module, "modules_to_save") and hasattr(module, "original_module"):
        active = module.active_adapters
        use_copy = not module.disable_adapters and active and active[0] in module.modules_to_save
        module = module.modules_to_save[active[0]] if use_copy else module.original_module
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"{model_name}.{path} is a {type(module).__name__}, not one linear layer (an adapter on the head, or "
            "a head of several layers): its logits are no W h + b of one weight"
        )
    return module


def pooled_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """(features [batch, hidden], logits [batch, labels]): the input of :func:`head_layer` for each example.

    RoBERTa family, linear head: the first token's final hidden state after the head's dropout
    (so equal to the hidden state in eval mode); standard head: the output of ``tanh(dense)``.
    Decoders: the final hidden state of the row ``transformers`` pools, the rightmost token that is
    not ``pad_token_id`` (with right padding, the last attended token). In eval mode
    ``features @ W.T + b`` equals the logits.
    """
    layer = head_layer(model)
    seen = []
    hook = layer.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        hook.remove()
    if len(seen) != 1:
        raise RuntimeError(f"the head layer ran {len(seen)} times in one forward pass; expected once")
    features = seen[0]
    if features.dim() == 3:
        features = features[torch.arange(features.shape[0], device=features.device), _pooled_index(model, input_ids)]
    return features, logits


def _pooled_index(model, input_ids: torch.Tensor):
    """The position a decoder's sequence classifier pools: transformers 5.23's GenericForSequenceClassification
    (and its GPT-NeoX and GPT-2 copies), the rightmost token that is not the pad token."""
    pad_id = unwrap(model).config.get_text_config().pad_token_id
    if pad_id is None:
        if input_ids.shape[0] != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        return -1
    non_pad_mask = (input_ids != pad_id).to(input_ids.device, torch.int32)
    token_indices = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (token_indices * non_pad_mask).argmax(-1)


def encode_inputs(tokenizer, texts: Sequence[str], max_length: int = 128) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens (RoBERTa: ``<s> ... </s>``), cut to ``max_length``.

    Truncation keeps the special tokens (the text is cut), so a RoBERTa example always ends in ``</s>``.
    """
    if isinstance(texts, str):
        raise TypeError("encode_inputs takes a list of texts, got one string")
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    for i, row in enumerate(ids):
        if not row:
            # A decoder would pool position 0 of a row of padding: a feature of no text.
            raise ValueError(f"text {i} ({json.dumps(texts[i])[:60]}) encodes to no token")
    return [list(row) for row in ids]


def collate(ids_list: Sequence[Sequence[int]], pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
    """``{input_ids, attention_mask}`` of the rows, right-padded with ``pad_id`` to the longest."""
    if not ids_list:
        raise ValueError("collate: no rows")
    width = max(len(row) for row in ids_list)
    input_ids = torch.full((len(ids_list), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids_list), width), dtype=torch.long)
    for i, row in enumerate(ids_list):
        input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
