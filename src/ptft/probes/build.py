"""Building a learning-dynamics probe set (Ren & Sutherland 2025) from a preference dataset.

For each of the first ``examples`` records of the training split (or of the test split, the
paper's ablation: ``source: test``), the probe prompt is the record's prompt in the task's
``default`` format, and each response type of ``types`` is one row (:data:`RESPONSE_TYPES`):

- ``chosen`` / ``rejected``: the record's own responses (y+ and y-);
- ``initial``: a response sampled from a fixed model (``initial.model``), the same text for every
  trained model (:func:`sample_responses`);
- ``chosen_semantic`` / ``rejected_semantic``: an LLM rewrite with other words, same meaning;
- ``chosen_format`` / ``rejected_format``: an LLM rewrite that keeps the format and changes the meaning;
- ``irrelevant_train``: the chosen response of probe prompt (i + 1) mod N;
- ``irrelevant_test``: the chosen response of test record i mod T (with ``source: test``, of the test
  records after the N probe prompts);
- ``random_sentence``: an LLM-written random sentence with as many words as the chosen response;
- ``shuffled_chosen`` / ``shuffled_test``: the words of ``chosen`` / of ``irrelevant_test`` in a random
  order seeded by (``seed``, example).

``argmax`` (y*) is no text: the prober computes it from the chosen rows
(:class:`ptft.finetune.probes.Prober`, ``argmax_of="chosen"``).

The rewrites go through the derive stage's backends and its SQLite reply cache
(:mod:`ptft.derive.backend`, :mod:`ptft.derive.cache`): the ``rewrites`` block is a
``derive.backend`` block, the instructions are :mod:`ptft.probes.templates`, and a re-run sends
only the requests the cache lacks. A request that fails after the backend's retries, or whose
reply stays empty after :data:`MAX_ATTEMPTS` attempts, fails the build naming the probe example
and response type; the replies that came are cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ptft.probes import ARGMAX, PROBE_SET_COLUMNS
from ptft.probes.templates import TEMPLATES, ProbeTemplate, template_versions

log = logging.getLogger(__name__)

RESPONSE_TYPES = ("chosen", "rejected", "initial", "chosen_semantic", "rejected_semantic", "chosen_format",
                  "rejected_format", "irrelevant_train", "irrelevant_test", "random_sentence", "shuffled_chosen",
                  "shuffled_test")  # fmt: skip
# The LLM rewrites: response type -> (template, the response it rewrites).
REWRITES = {
    "chosen_semantic": ("semantic", "chosen"),
    "rejected_semantic": ("semantic", "rejected"),
    "chosen_format": ("format", "chosen"),
    "rejected_format": ("format", "rejected"),
    "random_sentence": ("random", "chosen"),
}
SOURCES = ("train", "test")
DEFAULTS = {"examples": 500, "source": "train", "types": list(RESPONSE_TYPES), "rewrites": None, "initial": None,
            "generation": {}, "seed": 0}  # fmt: skip
INITIAL_DEFAULTS = {"model": None, "max_new_tokens": 128, "temperature": 1.0, "top_p": 1.0, "seed": 0,
                    "batch_size": 16}  # fmt: skip
GENERATION_DEFAULTS = {"temperature": 0.7, "max_tokens": 512}
MAX_ATTEMPTS = 3  # an empty reply is asked again (another seed), at most this many times in all
_SECRET = re.compile(r"(api_?key|token|secret|password)$", re.IGNORECASE)


class ProbeBuildFailed(RuntimeError):
    pass


# -- configuration


def complete_config(cfg: dict, name: str = "<name>") -> dict:
    """``cfg`` (a ``probe_sets.<name>`` block) checked and with its defaults; errors name the key."""
    where = f"probe_sets.{name}"
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: a probe set is a mapping, not {type(cfg).__name__}")
    allowed = ("task", *DEFAULTS)
    unknown = [k for k in cfg if k not in allowed]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; a probe set has {', '.join(allowed)}")
    out = {**DEFAULTS, **cfg}
    if not isinstance(out.get("task"), str) or not out["task"]:
        raise ValueError(f"{where}.task: the dataset whose records are probed (a name), not {out.get('task')!r}")
    if not isinstance(out["examples"], int) or isinstance(out["examples"], bool) or out["examples"] < 1:
        raise ValueError(f"{where}.examples: the number of probe prompts, an integer >= 1, not {out['examples']!r}")
    if out["source"] not in SOURCES:
        raise ValueError(f"{where}.source: {out['source']!r} is neither of {', '.join(SOURCES)}")
    if not isinstance(out["seed"], int) or isinstance(out["seed"], bool):
        raise ValueError(f"{where}.seed: an integer, not {out['seed']!r}")
    types = out["types"]
    if not isinstance(types, list | tuple) or not types or not all(isinstance(t, str) for t in types):
        raise ValueError(f"{where}.types: a non-empty list of response types out of {', '.join(RESPONSE_TYPES)}")
    for t in types:
        if t == ARGMAX:
            allowed = ", ".join(RESPONSE_TYPES)
            raise ValueError(f"{where}.types: {ARGMAX!r} is no text of the probe set, the prober computes it from "
                             f"the chosen rows (finetune probes argmax_of); allowed: {allowed}")  # fmt: skip
        if t not in RESPONSE_TYPES:
            raise ValueError(f"{where}.types: unknown response type {t!r}; allowed: {', '.join(RESPONSE_TYPES)}")
    if len(set(types)) != len(types):
        raise ValueError(f"{where}.types: {[t for t, n in Counter(types).items() if n > 1]} named twice")
    out["types"] = [t for t in RESPONSE_TYPES if t in types]  # one order, whatever the config's
    if any(t in REWRITES for t in types):
        rewrites = out["rewrites"]
        if not isinstance(rewrites, dict) or not rewrites.get("name"):
            raise ValueError(f"{where}.rewrites: the types {[t for t in out['types'] if t in REWRITES]} need a "
                             "derivation backend block (as derive.backend: name toy, openai or hf, ...)")  # fmt: skip
    generation = out["generation"] or {}
    if not isinstance(generation, dict) or set(generation) - set(GENERATION_DEFAULTS):
        raise ValueError(f"{where}.generation: a mapping of {', '.join(GENERATION_DEFAULTS)}, not {generation!r}")
    out["generation"] = {**GENERATION_DEFAULTS, **generation}
    if "initial" in out["types"]:
        initial = out["initial"] if out["initial"] is not None else {}
        if not isinstance(initial, dict):
            raise ValueError(f"{where}.initial: a mapping of {', '.join(INITIAL_DEFAULTS)}, not {initial!r}")
        bad = [k for k in initial if k not in INITIAL_DEFAULTS]
        if bad:
            raise ValueError(f"{where}.initial.{bad[0]}: unknown key; initial has {', '.join(INITIAL_DEFAULTS)}")
        out["initial"] = {**INITIAL_DEFAULTS, **initial}
    return out


def public_config(cfg: dict) -> dict:
    """``cfg`` without secrets (a key named like an API key or token; ``api_key_env`` names a variable, kept)."""
    if isinstance(cfg, dict):
        return {k: public_config(v) for k, v in cfg.items() if not _SECRET.search(str(k))}
    if isinstance(cfg, list | tuple):
        return [public_config(v) for v in cfg]
    return cfg


# -- the probe set


@dataclass
class _Rewrite:
    example: int
    type: str
    template: ProbeTemplate
    text: str  # what it rewrites (random: the chosen response, for its word count)
    attempt: int = 0


def _request_seed(base: int, item: _Rewrite) -> int:
    # A random sentence is asked for by its word count alone: its seed tells the examples apart.
    if item.template.kind == "random":
        return zlib.crc32(f"{base}|{item.example}".encode()) % (1 << 31) + item.attempt
    return base + item.attempt


def _shuffled(text: str, seed: int, example: int, kind: str) -> str:
    words = text.split()
    random.Random(f"probes:{kind}:{seed}:{example}").shuffle(words)
    return " ".join(words)


def build_probe_set(
    train_records: list[dict],
    test_records: list[dict],
    task,
    cfg: dict,
    backend=None,
    cache=None,
    initial_model=None,
    seed: int | None = None,
    *,
    name: str = "<name>",
) -> pd.DataFrame:
    """The probe set (columns ``example, prompt, response_type, response``), rows by example then type.

    ``task``: the task type the prompts are rendered with (a :class:`ptft.data.tasks.TaskType`; a
    dataset name or None: that of ``cfg["task"]``). ``cfg``: the ``probe_sets.<name>`` block
    (:func:`complete_config`). ``backend``: a derivation backend (None: built from ``cfg["rewrites"]``
    by :func:`ptft.derive.run.make_backend`); ``cache``: a :class:`ptft.derive.cache.ReplyCache` or
    the path of one. ``initial_model``: the folder (or pointer) that samples ``initial`` (None:
    ``cfg["initial"]["model"]``). ``seed``: of the shuffles and the rewrite requests (None: ``cfg["seed"]``).
    ``name``: the probe set's name, for messages.
    """
    from ptft.data.prompts import completion, render_prompt

    cfg = complete_config(cfg, name)
    where = f"probe_sets.{name}"
    seed = cfg["seed"] if seed is None else int(seed)
    if task is None or isinstance(task, str):
        from ptft.data.registry import get_dataset

        task = get_dataset(task or cfg["task"]).task
    n, types = cfg["examples"], cfg["types"]
    pool = train_records if cfg["source"] == "train" else test_records
    if len(pool) < n:
        raise ValueError(f"{where}.examples: {n} probe prompts asked, the {cfg['source']} split has "
                         f"{len(pool)} records")  # fmt: skip
    records = list(pool[:n])
    tests = list(test_records) if cfg["source"] == "train" else list(test_records[n:])
    if {"irrelevant_test", "shuffled_test"} & set(types) and not tests:
        beyond = "" if cfg["source"] == "train" else " beyond the probe prompts"
        raise ValueError(f"{where}.types: irrelevant_test and shuffled_test need test records{beyond}; "
                         "there are none")  # fmt: skip

    def response(record: dict, field: str) -> str:
        if field == "chosen":
            return str(record["chosen"]) if "chosen" in record else completion(task, record)
        if field not in record:
            raise ValueError(f"{where}.types: {[t for t in types if 'rejected' in t]} need a {field!r} response; "
                             f"the records of {cfg['task']} have {sorted(record)}")  # fmt: skip
        return str(record[field])

    prompts = [render_prompt(task, r, "default") for r in records]
    texts: dict[tuple[int, str], str] = {}
    for i, r in enumerate(records):
        texts[i, "chosen"] = response(r, "chosen")
        if any(t == "rejected" or REWRITES.get(t, ("", ""))[1] == "rejected" for t in types):
            texts[i, "rejected"] = response(r, "rejected")
        if "irrelevant_train" in types:
            texts[i, "irrelevant_train"] = response(records[(i + 1) % n], "chosen")
        if {"irrelevant_test", "shuffled_test"} & set(types):
            texts[i, "irrelevant_test"] = response(tests[i % len(tests)], "chosen")
        if "shuffled_chosen" in types:
            texts[i, "shuffled_chosen"] = _shuffled(texts[i, "chosen"], seed, i, "shuffled_chosen")
        if "shuffled_test" in types:
            texts[i, "shuffled_test"] = _shuffled(texts[i, "irrelevant_test"], seed, i, "shuffled_test")

    rewrites = [_Rewrite(i, t, TEMPLATES[REWRITES[t][0]], texts[i, REWRITES[t][1]])
                for i in range(n) for t in types if t in REWRITES]  # fmt: skip
    if rewrites:
        texts.update(_rewrite(rewrites, cfg, backend, cache, seed, where))
    if "initial" in types:
        initial = cfg["initial"]
        model = initial_model if initial_model is not None else initial["model"]
        if not model:
            raise ValueError(f"{where}.initial.model: the model that samples the initial responses is not given")
        samples = sample_responses(model, prompts, initial["max_new_tokens"], initial["temperature"],
                                   initial["top_p"], initial["seed"], initial["batch_size"])  # fmt: skip
        empty = sum(not s.strip() for s in samples)
        if empty:
            log.warning("%s: %d of %d initial responses sampled from %s are empty (EOS first)", where, empty, n, model)
        texts.update({(i, "initial"): s for i, s in enumerate(samples)})
    rows = [{"example": i, "prompt": prompts[i], "response_type": t, "response": texts[i, t]}
            for i in range(n) for t in types]  # fmt: skip
    return pd.DataFrame(rows, columns=list(PROBE_SET_COLUMNS))


def _rewrite(items: list[_Rewrite], cfg: dict, backend, cache, seed: int, where: str) -> dict[tuple[int, str], str]:
    """Each rewrite's text, through the cache and the backend, in rounds of attempts (module docstring)."""
    from ptft.derive.cache import ReplyCache

    if backend is None:
        from ptft.derive.run import make_backend

        backend = make_backend(cfg["rewrites"])
    if cache is None:
        raise ValueError(f"{where}: the rewrites need a reply cache (a ReplyCache or its path)")
    own = not isinstance(cache, ReplyCache)
    cache = ReplyCache(cache) if own else cache
    try:
        return _rewrite_rounds(items, cfg["generation"], backend, cache, seed, where)
    finally:
        if own:
            cache.close()


def _rewrite_rounds(items, generation: dict, backend, cache, seed: int, where: str) -> dict[tuple[int, str], str]:
    from ptft.derive.backend import Request
    from ptft.derive.cache import request_key
    from ptft.derive.checks import clean
    from ptft.derive.run import send

    out: dict[tuple[int, str], str] = {}
    failures: list[tuple[_Rewrite, str]] = []
    stats = Counter()
    pending = items
    while pending:
        requests = []
        for item in pending:
            params = {**generation, "seed": _request_seed(seed, item)}
            messages = item.template.messages(item.text)
            key = request_key(backend.name, backend.model, item.template.version, params, messages)
            meta = {"variant": item.template.variant, "text": item.text, "seed": params["seed"]}
            requests.append(Request(key, messages, params, meta))
        replies = cache.get_many({r.key for r in requests})
        to_send = list({r.key: r for r in requests if r.key not in replies}.values())
        versions = {r.key: item.template.version for r, item in zip(requests, pending, strict=True)}
        stats["requests"] += len(requests)
        stats["cache_hits"] += sum(r.key in replies for r in requests)
        failed = {}
        if to_send:
            failed = send(backend, cache, to_send, versions, replies, f"{where} rewrites",
                          lambda request, reply: stats.update(sent=1))  # fmt: skip
        next_pending = []
        for request, item in zip(requests, pending, strict=True):
            if request.key in failed:
                failures.append((item, failed[request.key]))
            elif request.key not in replies:
                failures.append((item, "the backend returned neither a reply nor a failure"))
            elif text := clean(replies[request.key].text):
                out[item.example, item.type] = text
            elif item.attempt + 1 < MAX_ATTEMPTS:
                item.attempt += 1
                next_pending.append(item)
            else:
                failures.append((item, f"empty reply {MAX_ATTEMPTS} times"))
        pending = next_pending
    log.info("%s: %d rewrite requests, %d cache hits, %d sent, %d failed", where, stats["requests"],
             stats["cache_hits"], stats["sent"], len(failures))  # fmt: skip
    if failures:
        named = "; ".join(f"example {item.example} {item.type}: {reason}" for item, reason in failures[:5])
        raise ProbeBuildFailed(
            f"{where}: {len(failures)} rewrite request(s) failed with {backend!r}: {named}"
            f"{' ...' if len(failures) > 5 else ''}. The replies that came are cached; a re-run sends only the rest."
        )
    return out


def sample_responses(model_path, prompts: list[str], max_new_tokens: int, temperature: float, top_p: float,
                     seed: int, batch_size: int = 16) -> list[str]:  # fmt: skip
    """One response per prompt sampled from the model at ``model_path`` (``do_sample``; greedy at temperature 0).

    Batches of similar length, left-padded; each batch is seeded with ``seed`` and its first
    prompt's place in the length order, so the same prompts and seed give the same texts. A prompt
    longer than the context window less ``max_new_tokens`` keeps its end. Responses end at EOS.
    """
    import torch
    from tqdm import tqdm

    from ptft.checkpoints.load import load_pretrained
    from ptft.evaluate.batching import context_limit, left_pad, length_sorted_batches

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_pretrained(model_path, device=device)
    model.eval()
    limit = context_limit(model, max_new_tokens)
    ids = [tok(p, add_special_tokens=False)["input_ids"][-limit:] for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = [""] * len(prompts)
    batches = list(length_sorted_batches([len(x) for x in ids], batch_size))
    sample = temperature > 0
    with torch.no_grad():
        for number, batch in enumerate(tqdm(batches, desc="initial responses", unit="batch", mininterval=2)):
            torch.manual_seed(seed * 1_000_003 + number)
            inputs = left_pad([ids[i] for i in batch], pad, model.device)
            inputs.pop("position_ids")  # generate() derives them from the attention mask
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=sample,
                                       temperature=temperature if sample else None, top_p=top_p if sample else None,
                                       top_k=None, eos_token_id=tok.eos_token_id, pad_token_id=pad)  # fmt: skip
            width = inputs["input_ids"].shape[1]
            for row, i in enumerate(batch):
                new = generated[row, width:].tolist()
                if tok.eos_token_id in new:
                    new = new[: new.index(tok.eos_token_id)]
                out[i] = tok.decode(new, skip_special_tokens=True).strip()
    return out


# -- the file and its record


def sidecar_path(out: str | Path) -> Path:
    """``<out>.json`` beside the probe set: ``probes/hh.parquet`` -> ``probes/hh.json``."""
    return Path(out).with_suffix(".json")


def probe_set_version(cfg: dict, inputs: dict[str, str]) -> str:
    """First 12 hex digits of the sha256 of the config (without secrets), the template versions and
    the inputs' digests (name -> sha256 of each input file or model)."""
    payload = {"config": public_config(cfg), "templates": template_versions(), "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def probe_set_record(probe_set: pd.DataFrame, cfg: dict, inputs: dict[str, str], backend=None,
                     initial_model=None) -> dict:  # fmt: skip
    """The sidecar JSON: ``version``, ``config`` (without secrets), ``counts`` per response type,
    ``backend`` and ``model`` (that sampled ``initial``), ``templates`` and ``inputs``."""
    counts = probe_set.groupby("response_type", sort=False).size()
    return {
        "version": probe_set_version(cfg, inputs),
        "config": public_config(cfg),
        "counts": {str(t): int(c) for t, c in counts.items()},
        "backend": None if backend is None else {"name": backend.name, "model": backend.model},
        "model": None if initial_model is None else str(initial_model),
        "templates": template_versions(),
        "inputs": inputs,
    }


def write_probe_set(out: str | Path, probe_set: pd.DataFrame, record: dict, provenance: dict | None = None) -> None:
    """The probe set (Parquet, atomically) and its record beside it (:func:`sidecar_path`)."""
    from ptft import io

    io.write_parquet(out, probe_set, {**(provenance or {}), "probe_set_version": record["version"]})
    io.write_json(sidecar_path(out), record)
