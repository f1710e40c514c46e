"""The derivation loop: every document × variant, through the cache, the backend and the checks.

Requests go out in rounds. Round ``a`` asks for attempt ``a`` of every (document, variant)
still without a usable rewrite; the attempt number is the request's ``seed`` offset, so a
retry is another request (another cache key) and a sampling backend gets another sample.
Every reply is cached as it arrives, usable or not, so a re-run replays the same decisions
without sending anything twice. A request the backend could not complete (after its own
retries) is not cached; the run then fails, naming them, and a re-run sends only those.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import pandas as pd
from tqdm import tqdm

from ptft.derive.backend import Backend, Reply, Request
from ptft.derive.cache import ReplyCache, request_key
from ptft.derive.checks import REASONS, clean, rejection
from ptft.derive.templates import Variant

VARIANT_COLUMNS = ["original_id", "variant", "factor", "text", "backend", "model", "template_version", "attempt",
                   "request_key"]  # fmt: skip
OPENAI_SETTINGS = ("base_url", "model", "api_key_env", "concurrency", "requests_per_minute", "timeout_s",
                   "max_retries", "backoff_s")  # fmt: skip


class DerivationFailed(RuntimeError):
    pass


def make_backend(cfg: dict) -> Backend:
    """The backend named by ``derive.backend.name``, built from that section's settings."""
    name = cfg["name"]
    if name == "toy":
        from ptft.derive.toy_backend import ToyBackend

        return ToyBackend()
    if name == "openai":
        from ptft.derive.openai_backend import OpenAIBackend

        return OpenAIBackend(**{k: cfg[k] for k in OPENAI_SETTINGS if cfg.get(k) is not None})
    if name == "hf":
        from ptft.config import complete
        from ptft.derive.hf_backend import HFBackend

        cfg = complete("derive.backend", cfg)
        return HFBackend(cfg["model"], batch_size=cfg["batch_size"], dtype=cfg.get("dtype"))
    raise ValueError(f"derive.backend.name: unknown backend {name!r} (toy, openai or hf)")


@dataclass
class _Item:
    doc_id: str
    text: str
    latent: str | None
    variant: Variant
    attempt: int = 0


def derive_variants(
    corpus: pd.DataFrame,
    variants: list[Variant],
    backend: Backend,
    cache: ReplyCache,
    generation: dict,
    checks: dict | None = None,
    max_attempts: int = 3,
    prices: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(variants table, per-variant statistics). Raises DerivationFailed if requests failed.

    ``corpus`` has ``doc_id``, ``text`` and optionally ``latent`` (toy documents' facts).
    ``generation`` holds the generation parameters (``seed`` is the base of attempt seeds).
    ``prices``: US dollars per million ``input`` and ``output`` tokens, for the cost estimate.
    """
    base_seed = int(generation.get("seed", 0))
    gen = {k: v for k, v in generation.items() if k != "seed"}
    latents = corpus["latent"] if "latent" in corpus else [None] * len(corpus)
    pending = [_Item(str(d), t, lat, v) for d, t, lat in zip(corpus["doc_id"], corpus["text"], latents, strict=True)
               for v in variants]  # fmt: skip
    stats: dict[str, Counter] = defaultdict(Counter)
    accepted: list[dict] = []
    failures: list[tuple[_Item, str]] = []
    round_ = 0
    while pending:
        requests = []
        for item in pending:
            params = {**gen, "seed": base_seed + item.attempt}
            messages = item.variant.messages(item.text)
            key = request_key(backend.name, backend.model, item.variant.version, params, messages)
            requests.append(Request(key, messages, params, {"latent": item.latent, "variant": item.variant.name}))
        replies = cache.get_many({r.key for r in requests})
        items = {r.key: item for r, item in zip(requests, pending, strict=True)}
        to_send = list({r.key: r for r in requests if r.key not in replies}.values())
        for r, item in zip(requests, pending, strict=True):
            stats[item.variant.name]["requests"] += 1
            stats[item.variant.name]["cache_hits"] += r.key in replies
        failed = _send(backend, cache, to_send, items, replies, stats, f"derive round {round_}") if to_send else {}
        next_pending = []
        for r, item in zip(requests, pending, strict=True):
            s = stats[item.variant.name]
            if r.key in failed:
                failures.append((item, failed[r.key]))
                continue
            text = clean(replies[r.key].text)
            why = rejection(text, item.text, checks)
            if why is None:
                s["accepted"] += 1
                accepted.append({"original_id": item.doc_id, "variant": item.variant.name,
                                 "factor": item.variant.factor, "text": text, "backend": backend.name,
                                 "model": backend.model, "template_version": item.variant.version,
                                 "attempt": item.attempt, "request_key": r.key})  # fmt: skip
                continue
            s[f"rejected_{why}"] += 1
            if item.attempt + 1 < max_attempts:
                item.attempt += 1
                next_pending.append(item)
            else:
                s["dropped"] += 1
        pending = next_pending
        round_ += 1
    table = _stats_table(stats, [v.name for v in variants], prices or {})
    if failures:
        reasons = Counter(reason for _, reason in failures)
        ids = sorted({item.doc_id for item, _ in failures})
        raise DerivationFailed(
            f"{len(failures)} derivation request(s) failed after the backend's retries "
            f"({dict(reasons.most_common(3))}); documents {ids[:5]}{' ...' if len(ids) > 5 else ''}. "
            f"The {sum(table['sent'])} completed replies are cached; a re-run sends only the failed requests."
        )
    out = pd.DataFrame(accepted, columns=VARIANT_COLUMNS).sort_values(["original_id", "variant"], ignore_index=True)
    return out, table


def _send(backend, cache, to_send, items: dict, replies: dict, stats: dict, desc: str) -> dict[str, str]:
    """:func:`send`, counting each variant's sent and failed requests and tokens in ``stats``."""

    def sent(request: Request, reply: Reply) -> None:
        s = stats[items[request.key].variant.name]
        s["sent"] += 1
        s["prompt_tokens"] += reply.prompt_tokens
        s["completion_tokens"] += reply.completion_tokens

    def failed(request: Request, _reason: str) -> None:
        stats[items[request.key].variant.name]["failed"] += 1

    versions = {r.key: items[r.key].variant.version for r in to_send}
    return send(backend, cache, to_send, versions, replies, desc, sent, failed)


def send(backend, cache, to_send, versions: dict, replies: dict, desc: str, on_sent=None, on_failed=None) -> dict:
    """Send ``to_send``; cache each reply as it comes (under its template's version, ``versions[key]``),
    and collect it in ``replies``. Returns {key: failure reason}. ``on_sent(request, reply)`` and
    ``on_failed(request, reason)`` are told of each, e.g. to count them. The derive stage's and the
    probe sets' rewrites both go through here."""
    failed: dict[str, str] = {}
    bar = tqdm(total=len(to_send), desc=desc, unit="req", mininterval=2)

    def on_reply(request: Request, reply: Reply) -> None:
        cache.put(request.key, backend.name, backend.model, versions[request.key],
                  {"messages": list(request.messages), "params": request.params}, reply)  # fmt: skip
        replies[request.key] = reply
        if on_sent is not None:
            on_sent(request, reply)
        bar.update()

    def on_failure(request: Request, reason: str) -> None:
        failed[request.key] = reason
        if on_failed is not None:
            on_failed(request, reason)
        bar.update()

    try:
        backend.run(to_send, on_reply, on_failure)
    finally:
        bar.close()
    return failed


def _stats_table(stats: dict[str, Counter], names: list[str], prices: dict) -> pd.DataFrame:
    cols = ["requests", "cache_hits", "sent", "failed", "accepted", "dropped", *(f"rejected_{r}" for r in REASONS),
            "prompt_tokens", "completion_tokens"]  # fmt: skip
    rows = [{"variant": n, **{c: int(stats[n][c]) for c in cols}} for n in names]
    df = pd.DataFrame(rows, columns=["variant", *cols])
    # Cost of what this run sent; cache hits cost nothing.
    df["est_cost_usd"] = (df["prompt_tokens"] * float(prices.get("input", 0.0))
                          + df["completion_tokens"] * float(prices.get("output", 0.0))) / 1e6  # fmt: skip
    return df


def stats_summary(table: pd.DataFrame) -> str:
    t = table.drop(columns="variant").sum()
    return (f"{int(t['requests'])} requests: {int(t['cache_hits'])} cache hits, {int(t['sent'])} sent, "
            f"{int(t['failed'])} failed; {int(t['accepted'])} accepted, {int(t['dropped'])} dropped; "
            f"tokens sent {int(t['prompt_tokens'])} in / {int(t['completion_tokens'])} out, "
            f"estimated cost ${t['est_cost_usd']:.4f}")  # fmt: skip
