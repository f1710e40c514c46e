"""Greedy generation: batched, left-padded, with the KV cache, stopping at EOS or a stop string."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ptft.evaluate.batching import context_limit, left_pad, length_sorted_batches
from ptft.evaluate.encoding import encode_prompts, fit_to_window


def cut_at_stop(text: str, stop: str) -> str:
    if stop and stop in text:
        text = text[: text.index(stop)]
    return text.strip()


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop: str,
    batch_size: int,
    allowed: Callable[[list[int]], list[int]] | None = None,
    add_bos: str | bool = "auto",
    return_truncated: bool = False,
):
    """The greedy continuation of each prompt, cut at the first ``stop`` and stripped.

    ``allowed(generated_ids)``, if given, lists the tokens the next step may choose from. Prompts
    are encoded and cut to the window (less ``max_new_tokens``) as in
    :func:`ptft.evaluate.tokenprob.score_token_prob`; with ``return_truncated`` the result is
    (texts, prompt tokens each lost).
    """
    prompts = list(prompts)
    encoded, cut = fit_to_window(
        tokenizer,
        prompts,
        encode_prompts(tokenizer, prompts, add_bos),
        context_limit(model, max_new_tokens),
        add_bos,
    )
    outputs: list[str] = [""] * len(prompts)
    for batch in length_sorted_batches([len(e) for e in encoded], batch_size):
        inputs = left_pad([encoded[i] for i in batch], tokenizer.pad_token_id, model.device)
        inputs.pop("position_ids")  # generate() derives them from the attention mask
        width = inputs["input_ids"].shape[1]
        constraint = None
        if allowed is not None:
            constraint = lambda _, ids, width=width: allowed(ids[width:].tolist())  # noqa: E731
        generated = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=[stop] if stop else None,
            tokenizer=tokenizer if stop else None,
            prefix_allowed_tokens_fn=constraint,
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        for row, i in enumerate(batch):
            outputs[i] = cut_at_stop(tokenizer.decode(new_tokens[row], skip_special_tokens=True), stop)
    return (outputs, cut) if return_truncated else outputs
