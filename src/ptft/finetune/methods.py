"""What each fine-tuning method changes about the model before the shared training loop runs.

- ``full``: every parameter trains.
- ``instruct``: every parameter trains, on a chat dataset (the loop masks the non-assistant turns).
- ``lora``: low-rank adapters from ``peft`` on the configured modules; only adapter parameters
  train. The result is saved merged into the base weights (a plain checkpoint that every stage
  loads) or as the adapter alone (``lora.save: adapter``), which :func:`ptft.checkpoints.load.
  load_pretrained` loads on top of its base checkpoint.
- ``lpft``: linear probing, then fine-tuning (Tomihari & Sato 2024). See :func:`fit_linear_head`.

**The linear head of a causal LM.** TokenProb scoring (``ptft.evaluate.tokenprob``) predicts a
label from the LM head's logits of the label tokens at the last prompt position, so for a
classification task the rows of the LM head that belong to the labels' first tokens *are* a
linear classifier on the final hidden state (the "penultimate representation"): softmax over
those K rows is the model's label distribution. LP-FT fits exactly those K rows by multinomial
logistic regression on frozen features, writes them back into the head, and then fine-tunes
everything from there with the usual loss. When the head is tied to the input embeddings it is
untied first (a copy), so probing does not move any input representation.
"""

from __future__ import annotations

import logging

import torch

from ptft.data.prompts import completion, join_prompt_completion, render_prompt
from ptft.finetune.batching import collate_padded

log = logging.getLogger(__name__)
METHODS = ("full", "lora", "lpft", "instruct")


def unwrap(model):
    """The ``transformers`` model inside a ``peft`` wrapper (its LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def apply_lora(model, lora: dict):
    """Wrap ``model`` with LoRA adapters; every other parameter is frozen by ``peft``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def label_token_ids(tokenizer, task) -> list[int]:
    """The first token of each label's completion (with its leading space, as trained and scored)."""
    ids = []
    for label in task.labels:
        _, target = join_prompt_completion("x: ", label)
        ids.append(tokenizer(target, add_special_tokens=False)["input_ids"][0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"lpft: labels {task.labels} of task {task.name!r} share a first token; no linear head fits")
    return ids


def untie_head(model) -> torch.nn.Linear:
    """Give the model an LM head of its own (a copy) if it shares weights with the embeddings."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        new = torch.nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
        new = new.to(device=head.weight.device, dtype=head.weight.dtype)
        new.weight.data.copy_(head.weight.data)
        model.set_output_embeddings(new)
        model.config.tie_word_embeddings = False
        head = new
    return head


@torch.no_grad()
def prompt_features(model, tokenizer, task, records, fmt: str, batch_size: int, device) -> torch.Tensor:
    """Final hidden state (after the last norm) at each record's last prompt token."""
    body = unwrap(model).base_model
    prompts = [join_prompt_completion(render_prompt(task, r, fmt), completion(task, r))[0] for r in records]
    feats = []
    for start in range(0, len(prompts), batch_size):
        enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
        batch = collate_padded([(x, x) for x in enc], 0, device)  # right-padded, as the probes
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        hidden = body(**inputs, use_cache=False).last_hidden_state
        ends = torch.tensor([len(x) - 1 for x in enc], device=device)
        feats.append(hidden[torch.arange(len(enc), device=device), ends].float())
    return torch.cat(feats)


def fit_linear_head(model, tokenizer, task, records, fmt: str, lp: dict, device) -> dict:
    """Linear probing: fit the label rows of the (untied) LM head on frozen features.

    Multinomial logistic regression over the K label tokens' rows, started from their
    pre-trained values, with L2 penalty ``lp.l2`` on the weights, full-batch L-BFGS for at most
    ``lp.max_iter`` iterations. Returns accuracies before and after and the head's norm.
    """
    if task.kind != "classification":
        raise ValueError(f"lpft: task {task.name!r} is {task.kind}; linear probing needs a classification task")
    was_training = model.training
    model.eval()
    label_ids = label_token_ids(tokenizer, task)
    x = prompt_features(model, tokenizer, task, records, fmt, lp["batch_size"], device)
    y = torch.tensor([int(r["label"]) for r in records], device=device)
    head = untie_head(unwrap(model))
    w = head.weight.data[label_ids].float().clone().requires_grad_(True)
    before = float(((x @ w.T).argmax(1) == y).float().mean())
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=lp["max_iter"], line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T, y) + 0.5 * lp["l2"] * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = w.detach()
    head.weight.data[label_ids] = w.to(head.weight.dtype)
    after = float(((x @ w.T).argmax(1) == y).float().mean())
    model.train(was_training)
    stats = {"lp_accuracy_before": before, "lp_accuracy_after": after, "lp_head_norm": float(w.norm())}
    log.info("linear probe on %d examples: %s", len(records), stats)
    return stats


def save_finetuned(path, model, tokenizer, method: str, lora: dict | None, base_checkpoint) -> None:
    """Write the fine-tuned model as a ``save_pretrained`` folder (atomically)."""
    from ptft import io

    if method != "lora":
        io.write_pretrained(path, model, tokenizer)
    elif lora["save"] == "merged":
        io.write_pretrained(path, model.merge_and_unload(), tokenizer)
    else:

        def fill(tmp):
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            io.write_json(tmp / "ptft_adapter.json", {"base_checkpoint": str(base_checkpoint)})

        io.write_dir(path, fill)
