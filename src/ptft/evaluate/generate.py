"""Greedy generation: batched, left-padded, with the KV cache, stopping at EOS or a stop string.

Two ways to decode, the same greedy texts (``evaluate.decoder``):

- ``generate``: transformers' ``generate`` with a dynamic KV cache. Used on a CPU, for constrained
  decoding (``allowed``) and for models that cannot be compiled whole.
- ``static``: :class:`StaticDecoder`, our own loop over a static KV cache whose one-token decode
  step is compiled with CUDA graphs (``torch.compile(mode="reduce-overhead")``). On a GPU the
  eager step is launch-bound: a 1B model's step issues hundreds of small kernels, and ``generate``
  adds Python work per step (its stop-string matcher). Here the stop is a tensor check (the row's
  token is EOS or a token whose text holds the stop string), read back every few steps; text past
  the stop is cut anyway, so a stop string that spans two tokens only costs the steps to
  ``max_new_tokens``, never a different text.

``auto`` is ``static`` on a GPU for a model transformers can compile whole, else ``generate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from ptft.evaluate.batching import context_limit, left_pad, model_max_length, progress
from ptft.evaluate.causal_attention import use_causal_attention
from ptft.evaluate.encoding import encode_prompts, fit_to_window
from ptft.evaluate.forward import compile_fn, compiling, keeps_logits, spans_devices
from ptft.evaluate.prefix import expanded, prefix_batches

log = logging.getLogger(__name__)

DECODERS = ("auto", "generate", "static")
# Static caches are sized to a multiple of this: few shapes, so few compiled graphs, and little
# attention over unwritten positions for short prompts.
CACHE_BUCKET = 256
# How often (decode steps) the loop reads back whether every row has stopped: each read is a sync.
CHECK_EVERY = 8


def cut_at_stop(text: str, stop: str) -> str:
    if stop and stop in text:
        text = text[: text.index(stop)]
    return text.strip()


def resolve_decoder(model, decoder: str = "auto", constrained: bool = False) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"evaluate.decoder: {decoder!r} is not one of {DECODERS}")
    if decoder == "auto":
        compilable = bool(getattr(model, "_can_compile_fullgraph", False))
        decoder = "static" if model.device.type == "cuda" and compilable else "generate"
    if decoder == "static" and constrained:
        return "generate"  # prefix_allowed_tokens_fn needs generate's logits processors
    if decoder == "static" and spans_devices(model):
        return "generate"  # the static decoder's cache and graphs are one device's; generate moves between them
    return decoder


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop: str,
    batch_size: int | str,
    allowed: Callable[[list[int]], list[int]] | None = None,
    add_bos: str | bool = "auto",
    return_truncated: bool = False,
    decoder: str = "auto",
    shared_prefix: bool = False,
):
    """The greedy continuation of each prompt, cut at the first ``stop`` and stripped.

    ``allowed(generated_ids)``, if given, lists the tokens the next step may choose from. Prompts
    are encoded and cut to the window (less ``max_new_tokens``) as in
    :func:`ptft.evaluate.tokenprob.score_token_prob`; with ``return_truncated`` the result is
    (texts, prompt tokens each lost). ``decoder``: see the module's docstring.

    ``batch_size`` ``"auto"`` (``evaluate.generation_batch_size``) is, with the static decoder on a
    GPU, the most rows, up to 64, whose caches fit in the free memory (:func:`auto_batch_size`); elsewhere
    :data:`AUTO_FALLBACK`. A batch that runs out of GPU memory anyway is split in halves.

    With ``shared_prefix`` (``evaluate.fewshot: fixed``), prompts that begin alike run from one KV
    cache of their beginning (:mod:`ptft.evaluate.prefix`): a batch's rows are that beginning, the
    left padding of the batch, then each prompt's own tokens, the padding masked and the positions
    counting real tokens, as in a batch of whole prompts. The static decoder, where it compiles,
    runs the whole prompts instead: measured faster (:data:`PREFIX_WHEN_COMPILED`). The texts are the same.
    """
    prompts = list(prompts)
    encoded, cut = fit_to_window(
        tokenizer,
        prompts,
        encode_prompts(tokenizer, prompts, add_bos),
        context_limit(model, max_new_tokens),
        add_bos,
    )
    decoder = resolve_decoder(model, decoder, constrained=allowed is not None)
    static = StaticDecoder.of(model, tokenizer, stop) if decoder == "static" else None
    if static is not None and compiling(model) and not PREFIX_WHEN_COMPILED:
        shared_prefix = False
    if batch_size == "auto":
        longest = max(map(len, encoded), default=1)
        batch_size = auto_batch_size(model, longest, max_new_tokens) if static is not None else AUTO_FALLBACK
        log.info("generation batch size (auto): %d rows for prompts of up to %d tokens", batch_size, longest)
    outputs: list[str] = [""] * len(prompts)

    def run(batch: list[int], shared: int, prefix) -> None:
        inputs = left_pad([encoded[i][shared:] for i in batch], tokenizer.pad_token_id, model.device)
        past = None
        if shared:
            inputs = behind(encoded[batch[0]][:shared], inputs)
            past = expanded(model, prefix, len(batch))
        if static is not None:
            new_tokens = static(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], max_new_tokens,
                                past)  # fmt: skip
        else:
            new_tokens = _generate(model, tokenizer, inputs, max_new_tokens, stop, allowed, past)
        for row, i in enumerate(batch):
            outputs[i] = cut_at_stop(tokenizer.decode(new_tokens[row], skip_special_tokens=True), stop)
        bar.update(len(batch))

    with progress(len(prompts), "generation") as bar:
        for shared, prefix, batch in prefix_batches(model, encoded, batch_size, shared_prefix):
            in_halves_on_oom(lambda rows, shared=shared, prefix=prefix: run(rows, shared, prefix), batch)
    return (outputs, cut) if return_truncated else outputs


def behind(prefix: Sequence[int], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Left-padded ``inputs`` with ``prefix`` in front of every row: ids, mask and positions of the whole rows."""
    ids = inputs["input_ids"]
    rows, device = ids.shape[0], ids.device
    head = torch.tensor(list(prefix), dtype=torch.long, device=device).expand(rows, -1)
    shared = head.shape[1]
    return {
        "input_ids": torch.cat([head, ids], 1),
        "attention_mask": torch.cat([torch.ones_like(head), inputs["attention_mask"]], 1),
        "position_ids": torch.cat(
            [torch.arange(shared, device=device).expand(rows, -1), inputs["position_ids"] + shared], 1
        ),  # fmt: skip
    }


def generation_batch_size(cfg: dict) -> int | str:
    """``evaluate.generation_batch_size``, where null means ``evaluate.batch_size``."""
    return cfg.get("generation_batch_size") or cfg["batch_size"]


# Whether the static decoder, compiled, runs fixed shots from their shared prefix's cache. No: whole
# prompts run compiled, right-padded and without a mask (flash attention), while from a prefix's
# cache the prompt forward runs eagerly with one. On one H200, 4-shot XSum from the prefix ran at
# 67.3 items/s against 76.7 whole, and its first pass took 386 s against 147 s (it compiles a decode
# step for each group's odd batch). The benchmark turns it on to measure it.
PREFIX_WHEN_COMPILED = False

# What "auto" means where no memory is measured (a CPU, or generate()).
AUTO_FALLBACK = 32
# The most rows "auto" gives, as lm-evaluation-harness's HFLM caps its auto search (max_batch_size
# 64). Past it, rows add little: the decode step reads each row's own cache (at 64 rows the weights
# are 0.5 ms of a 5.7 ms step on an H200) and the prompt forward is bound by arithmetic. They cost
# much: on one H200 the 149 rows that fit ran at 8.7 items/s against 71.1 at 64
# (docs/performance.md).
AUTO_MAX_ROWS = 64
# The share of the free GPU memory auto_batch_size plans to fill: the rest is for what it does not
# count (the compiled graphs' pools, the allocator's fragmentation).
AUTO_MEMORY_SHARE = 0.8


def auto_batch_size(model, prompt_tokens: int, max_new_tokens: int, limit: int = AUTO_MAX_ROWS) -> int:
    """The most rows of ``prompt_tokens``, up to ``limit``, the static decoder can run in the GPU's free memory.

    Like lm-evaluation-harness's ``batch_size: auto``, the largest batch that fits; computed, not
    found by trial: per row, the static cache (keys and values of every layer over the cache
    length), the prompt's dynamic cache copied into it, and the prompt forward's largest
    activations (the MLP's intermediate width at every prompt position, the vocabulary at one).
    """
    free, _ = torch.cuda.mem_get_info(model.device)
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_width = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    size = next(model.parameters()).element_size()
    per_position = 2 * cfg.num_hidden_layers * kv_width * head_dim * size
    length = cache_length(model, prompt_tokens, max_new_tokens)
    intermediate = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
    activations = prompt_tokens * (3 * intermediate + 4 * cfg.hidden_size) * size + cfg.vocab_size * 4
    per_row = per_position * (length + prompt_tokens) + activations
    return max(1, min(limit, int(AUTO_MEMORY_SHARE * free // per_row)))


def cache_length(model, prompt_tokens: int, max_new_tokens: int) -> int:
    """The static cache's length for a batch: its prompt width and new tokens, rounded up to
    :data:`CACHE_BUCKET` but never past the model's window (a longer cache trips a device assert on CUDA)."""
    needed = prompt_tokens + max_new_tokens
    return max(min(-(-needed // CACHE_BUCKET) * CACHE_BUCKET, model_max_length(model)), needed)


def in_halves_on_oom(run: Callable[[list[int]], None], batch: list[int]) -> None:
    """``run(batch)``; if the GPU runs out of memory, the two halves one after the other (recursively)."""
    try:
        run(batch)
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
        log.warning("out of GPU memory at %d rows: running the batch in halves", len(batch))
        torch.cuda.empty_cache()
        half = len(batch) // 2
        in_halves_on_oom(run, batch[:half])
        in_halves_on_oom(run, batch[half:])


def _generate(model, tokenizer, inputs: dict, max_new_tokens: int, stop: str, allowed, past=None) -> torch.Tensor:
    inputs.pop("position_ids")  # generate() derives them from the attention mask
    if past is not None:  # generate() runs only the ids past the cache's length
        inputs["past_key_values"] = past
    width = inputs["input_ids"].shape[1]
    constraint = None
    if allowed is not None:
        constraint = lambda _, ids: allowed(ids[width:].tolist())  # noqa: E731
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
    return generated[:, width:]


def stop_token_ids(tokenizer, stop: str) -> list[int]:
    """EOS and every token whose text holds ``stop``: a row that emits one has finished."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if stop:
        vocab = range(len(tokenizer))
        ids |= {i for i, text in zip(vocab, tokenizer.batch_decode([[i] for i in vocab]), strict=True) if stop in text}
    return sorted(ids)


class StaticDecoder:
    """Greedy decoding over a static KV cache, the decode step compiled (CUDA graphs) on a GPU.

    One decoder per (model, tokenizer, stop) in a process (:meth:`of`), so its compiled step and
    its graphs are reused across batches and eval sets. One cache is held at a time, sized
    ``rows × bucket(prompt width + max_new_tokens)``: batches come longest first, so each size is
    built once.
    """

    _made: dict = {}

    @classmethod
    def of(cls, model, tokenizer, stop: str) -> StaticDecoder:
        key = (id(model), id(tokenizer), stop)
        if key not in cls._made:
            cls._made.clear()  # one model per process at a time: free the previous one's cache
            cls._made[key] = cls(model, stop_token_ids(tokenizer, stop), tokenizer.pad_token_id)
        return cls._made[key]

    def __init__(self, model, stops: Sequence[int], pad_id: int | None):
        self.model = model
        self.stops = torch.tensor(list(stops), dtype=torch.long, device=model.device)
        self.pad_id = pad_id if pad_id is not None else 0
        self.cache, self.shape = None, None
        self.keep = {"logits_to_keep": 1} if keeps_logits(model) else {}
        self.step, self.prefill = self._step, self._prefill
        if compiling(model):
            use_causal_attention(model)  # the prompts' forward runs SDPA's flash kernel (its module says why)
            # A graph per (rows, cache bucket): more than dynamo's default of 8 in one evaluation.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self.step = compile_fn(self._step, dynamic=False, graphs=True)
            # The prompt's forward is mostly elementwise work eagerly (norms, rotary, activations in
            # separate kernels); compiled, one graph serves every batch shape.
            self.prefill = compile_fn(self._prefill, dynamic=True)

    def _prefill(self, input_ids, position_ids, attention_mask=None, past=None):
        """The cache of the prompts' forward (a dynamic one: its attention is causal over the prompt
        alone, where a static cache's would run over the whole cache length with a mask, at a third of
        the speed). With ``past`` (a shared prefix's cache), only the ids past its length run."""
        from transformers import DynamicCache

        if past is None:
            past = DynamicCache(config=self.model.config)
        done = past.get_seq_length()
        self.model(input_ids=input_ids[:, done:], attention_mask=attention_mask, position_ids=position_ids[:, done:],
                   past_key_values=past, use_cache=True, **self.keep)  # fmt: skip
        return past

    def _step(self, token, position, cache_position, mask, cache):
        logits = self.model(input_ids=token, position_ids=position, cache_position=cache_position,
                            attention_mask=mask, past_key_values=cache, use_cache=True).logits  # fmt: skip
        return logits[:, -1].argmax(-1)

    def _cache(self, rows: int, length: int):
        from transformers import StaticCache

        if self.shape != (rows, length):
            self.cache = None  # free the old one first: a cache is gigabytes at a large batch
            self.cache = StaticCache(config=self.model.config, max_cache_len=length)
            self.shape = (rows, length)
        else:
            self.cache.reset()
        return self.cache

    def __call__(self, input_ids, attention_mask, position_ids, max_new_tokens: int, past=None) -> torch.Tensor:
        """The new tokens of each row (rows × at most ``max_new_tokens``), pad after a row's stop;
        ``past``: the cache of the rows' first ids (a shared prefix), or None."""
        rows, width = input_ids.shape
        device = input_ids.device
        length = cache_length(self.model, width, max_new_tokens)
        cache = self._cache(rows, length)
        # The prompts but their last tokens fill the cache; the first decode step runs the last
        # tokens. So the prompt forward needs no row's logits, wherever its prompt ends.
        mask = torch.ones(rows, length, dtype=attention_mask.dtype, device=device)
        head_ids, head_mask, head_positions = input_ids[:, :-1], attention_mask[:, :-1], position_ids[:, :-1]
        if past is None:
            # Right-padded and unmasked: causality alone keeps each row's tokens from the padding after
            # them, and SDPA runs its flash kernel. Each row's keys and values fill the cache from slot
            # 0, its padding after them, masked for the decode steps; slots need not follow positions,
            # which the rotary embedding took from the position ids.
            ids, positions, filled = right_padded(head_ids, head_mask, head_positions, self.pad_id)
            mask[:, : width - 1] = filled
            if width > 1:
                past = self.prefill(ids, positions)
        else:
            mask[:, :width] = attention_mask
            # From a prefix's cache the prompt's forward runs eagerly: compiled, dynamo specialised on the
            # cache's length and recompiled for every group (minutes on one H200).
            if width - 1 > past.get_seq_length():
                past = self._prefill(head_ids, head_positions, head_mask, past)
        for index, layer in enumerate(past.layers if past is not None else []):  # the cache fills from its start
            slots = torch.arange(layer.keys.shape[2], device=device)
            cache.update(layer.keys, layer.values, index, {"cache_position": slots})
        del past
        token, position = input_ids[:, -1], position_ids[:, -1:]
        out = []
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            if t and t % CHECK_EVERY == 0 and bool(done.all()):
                break
            cache_position = torch.full((1,), width - 1 + t, dtype=torch.long, device=device)
            # clone: a CUDA graph's output is overwritten by its next replay
            token = self.step(token[:, None], position + t, cache_position, mask, cache).clone()
            token = torch.where(done, self.pad_id, token)
            out.append(token)
            done |= torch.isin(token, self.stops)
        return torch.stack(out, 1)


def right_padded(input_ids, attention_mask, position_ids, pad_id: int):
    """Left-padded rows' ids, positions and mask, right-padded (on their device, without a sync).
    A padding token's position is its column: causality keeps it from every real token."""
    width = input_ids.shape[1]
    lengths = attention_mask.sum(1, keepdim=True)
    column = torch.arange(width, device=input_ids.device)[None]
    source = (column + width - lengths).clamp(max=width - 1)
    real = column < lengths
    return (
        torch.where(real, input_ids.gather(1, source), pad_id),
        torch.where(real, position_ids.gather(1, source), column),
        real.to(attention_mask.dtype),
    )
