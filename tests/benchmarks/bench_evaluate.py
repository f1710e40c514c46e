"""Our multiple-choice scorer against lm-evaluation-harness, side by side in one process (not run in CI).

    .venv/bin/python tests/benchmarks/bench_evaluate.py --out bench_evaluate.json
    .venv/bin/python tests/benchmarks/bench_evaluate.py --build-tiny --limit 50

Same model files, same items, same context and choice strings on both sides, fp32 on CPU,
``--threads`` torch threads (default 2) for both, batch size ``--batch-size`` (default 32).

- **Model.** ``results/toy/checkpoints/step250`` (the toy study's last checkpoint), or
  ``--model-dir``, or with ``--build-tiny`` a random-init tiny LLaMA and toy tokenizer built as
  the tests' ``tiny_model_dir`` fixture builds them. Ours is loaded with
  ``ptft.checkpoints.load.load_pretrained``, lm-eval's with ``HFLM(pretrained=<dir>)``; both
  once, before any timing.
- **toy_mc** (multiple choice, 4 choices): toy summary documents (the eval sets
  ``toy_summary`` and ``toy_summary_ood``, topped up from their generators). The context is
  the document without its last sentence; the choices are its last sentence and the last
  sentences of three other documents of the same domain that do not name its protagonist
  (7-9 tokens each).
- **toy_nli** (classification as multiple choice): the NLI eval sets ``toy_nli`` and
  ``toy_nli_ood``, topped up the same way. The context is the 0-shot prompt in the default
  format (``ptft.data.prompts``, stripped on the right as ``build_prompts`` strips it); the
  choices are the label words, one token each.
- **toy_mc_varied** (multiple choice, 4 choices): toy_mc's contexts, with choices cut from the
  start of texts at 1-400 characters (``varied_mc_items``): a batch mixes one-token and
  hundred-token choices, the case where padding every choice row to the longest one is costly.
- ``--limit`` items per task (default 1000). Both tasks are written as lm-eval YAML tasks over
  local JSONL files (``dataset_path: json``) in a temporary directory, with the choices in the
  documents and ``target_delimiter`` at its default ``" "``, which is also ours.

Timing, best of ``--repeat`` runs of each side (the two sides alternate, per task):

- **Ours**: ``score_multiple_choice`` then ``mc_predictions``: tokenization, batching, the
  forward passes, the decisions.
- **lm-eval, scoring**: the ``HFLM.loglikelihood`` call that ``simple_evaluate`` makes:
  tokenization (``_encode_pair`` per request), sorting and grouping, the forward passes. This
  is the like-for-like number.
- **lm-eval, end to end**: the whole ``simple_evaluate`` call on the already-loaded task
  (dataset loading is outside): building the requests, the loglikelihood call, the metrics,
  logging the samples, and its run metadata (``add_env_info`` runs torch's environment report,
  with subprocesses); ``bootstrap_iters=0``, so no standard errors.

The batch size means different things: lm-eval batches 32 *requests* (one per choice; choices
of one token share one request through its one-token-continuation cache), ours 32 *items*
(the context runs once per item, its choices continue from its KV cache).

Reported per task and overall: each side's mean acc and acc_norm, per-item mismatches of acc,
acc_norm and the predicted choices, the largest absolute difference of any choice's
log-likelihood, each side's items/s and the ratio ours / lm-eval. Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from itertools import chain, islice, zip_longest
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import emit

from ptft.data.prompts import few_shot_prompt
from ptft.data.registry import DATASETS
from ptft.data.tasks import TASK_TYPES
from ptft.evaluate.multiple_choice import encode_requests, mc_predictions, score_multiple_choice
from ptft.toy.generate import generate_splits, record_key

# huggingface_hub and datasets read these once, when first imported: everything that imports
# them (transformers, lm_eval, ptft.checkpoints) is imported inside the functions below.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[2]
TOY_CHECKPOINT = ROOT / "results/toy/checkpoints/step250"
TOY_EVAL = ROOT / "results/toy/data/eval"
TASKS = ("toy_mc", "toy_mc_varied", "toy_nli")


# --- items -------------------------------------------------------------------------------------


def toy_records(names: tuple[str, ...], n: int, seed: int, data_dir: Path) -> list[dict]:
    """n distinct records of the toy eval sets ``names``: their files first, then their generators.

    The eval files hold 100 items each, fewer than a timing needs. The sets are interleaved so
    that a small ``n`` still has every domain; each record gets its set's ``domain``.
    """
    per_set = []
    for name in names:
        spec = DATASETS[name]
        path = data_dir / f"{name}.parquet"
        stored = pd.read_parquet(path).to_dict("records") if path.exists() else []
        generated = generate_splits(spec, {"bench": n}, seed)["bench"]
        per_set.append([(spec, r) for r in chain(stored, generated)])
    out, seen = [], set()
    for spec, record in (x for x in chain.from_iterable(zip_longest(*per_set)) if x is not None):
        key = record_key(spec, record)
        if key not in seen:
            seen.add(key)
            out.append({**record, "domain": spec.domain})
    return out[:n]


def _sentences(document: str) -> list[str]:
    return [s.strip() + " ." for s in document.split(" .") if s.strip()]


def mc_items(n: int, seed: int, data_dir: Path, shots: int = 0) -> list[dict]:
    """Which sentence ends the story? Its true last sentence or that of one of three other stories.

    With ``shots``, each context starts with that many other stories, each with its true ending,
    drawn from a pool of stories that are never scored (seeded per item).
    """
    stories = []
    pool_size = 4 * shots
    for r in toy_records(("toy_summary", "toy_summary_ood"), n + pool_size, seed, data_dir):
        sentences = _sentences(r["document"])
        # The summary starts with the protagonist's name.
        stories.append((" ".join(sentences[:-1]), sentences[-1], r["summary"].split()[0], r["domain"]))
    endings: dict[str, set[str]] = {}
    for _, ending, _, domain in stories:
        endings.setdefault(domain, set()).add(ending)
    # Distractors of the same domain (the same sentence form) about someone else, so that exactly
    # one choice continues the story.
    pools = {domain: sorted(e) for domain, e in endings.items()}
    rng = random.Random(f"{seed}:toy_mc")
    pool, stories = stories[n:], stories[:n]
    items = []
    for i, (context, ending, name, domain) in enumerate(stories):
        choices = rng.sample([e for e in pools[domain] if name not in e.split()], 3) + [ending]
        rng.shuffle(choices)
        solved = [f"{c} {e}" for c, e, _, _ in random.Random(f"{seed}:toy_mc:{i}").sample(pool, shots)]
        items.append({"query": "\n\n".join([*solved, context]), "choices": choices, "label": choices.index(ending)})
    return items


def varied_mc_items(n: int, seed: int, data_dir: Path, shots: int = 0) -> list[dict]:
    """toy_mc's stories with choices of 1-400 characters: how the story goes on, or other stories' text.

    Each choice is cut from the start of a text (the true one: the story's own last sentence
    followed by the next stories; a distractor: other stories) at a length drawn uniformly from
    1-400 characters, so one batch mixes one-token and hundred-token choices.
    """
    base = mc_items(n + 3, seed, data_dir, shots)
    texts = [" ".join(item["choices"][item["label"]] for item in base[j : j + 12]) * 4 for j in range(len(base))]
    rng = random.Random(f"{seed}:toy_mc_varied")
    items = []
    for i, item in enumerate(base[:n]):
        others = rng.sample([j for j in range(len(base)) if j != i], 3)
        # Cut texts never end in a space: lm-eval and ours would both move it, but it makes no choice.
        choices = [texts[j][: rng.randint(1, 400)].rstrip() or texts[j][0] for j in [i, *others]]
        order = list(range(4))
        rng.shuffle(order)
        items.append({"query": item["query"], "choices": [choices[k] for k in order], "label": order.index(0)})
    return items


def nli_items(n: int, seed: int, data_dir: Path, shots: int = 0) -> list[dict]:
    """The NLI prompt in the default format, with ``shots`` solved examples from an unscored pool."""
    task = TASK_TYPES["nli"]
    records = toy_records(("toy_nli", "toy_nli_ood"), n + 4 * shots, seed, data_dir)
    pool, records = records[n:], records[:n]
    items = []
    for i, r in enumerate(records):
        # What ptft.evaluate.run.build_prompts gives (shots seeded per item; no trailing space).
        query = few_shot_prompt(task, random.Random(f"{seed}:toy_nli:{i}").sample(pool, shots), r, "default")
        items.append({"query": query, "choices": list(task.labels), "label": int(r["label"])})
    return items


def write_lm_eval_task(folder: Path, name: str, items: list[dict]) -> None:
    """A JSONL file and the YAML of a 0-shot multiple-choice task reading it (as tasks/arc/*.yaml)."""
    import yaml

    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    config = {
        "task": name,
        "dataset_path": "json",
        # datasets' own cache of the parsed file goes to the temporary folder, not ~/.cache.
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "hf_datasets")},
        "test_split": "test",
        "output_type": "multiple_choice",
        # Field names, not Jinja templates: lm-eval then returns the document's values as they are
        # (a rendered template that is all digits would be parsed as a number, for one).
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


# --- models ------------------------------------------------------------------------------------


def build_tiny(out: Path) -> Path:
    """The ``tiny_model_dir`` fixture of tests/conftest.py: random LLaMA (hidden 32, 2 layers), toy BPE."""
    from ptft.checkpoints.tokenizer import train_tokenizer
    from ptft.checkpoints.toy_pretrain import build_model
    from ptft.toy.corpus import documents, tokenizer_extra_texts

    torch.manual_seed(0)
    docs = documents({"story": 1, "nli": 1, "summary": 1}, 0, {})
    tok = train_tokenizer(chain(islice(docs, 300), tokenizer_extra_texts()), 1024)
    cfg = {"model": {"hidden_size": 32, "intermediate_size": 64, "layers": 2, "heads": 2,
                     "max_position_embeddings": 1024}}  # fmt: skip
    model = build_model(cfg, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def timed(fn: Callable) -> tuple[Callable, list[float]]:
    """fn wrapped so that the wall time of each call is appended to the returned list."""
    seconds: list[float] = []

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t)

    return wrapper, seconds


# --- the two sides -----------------------------------------------------------------------------


def run_ours(model, tokenizer, items: list[dict], batch_size: int) -> tuple[float, list[np.ndarray], list[dict]]:
    contexts = [item["query"] for item in items]
    choices = [item["choices"] for item in items]
    t = time.perf_counter()
    lls = score_multiple_choice(model, tokenizer, contexts, choices, batch_size, delimiter=" ")
    picks = [mc_predictions(ll, c) for ll, c in zip(lls, choices, strict=True)]
    return time.perf_counter() - t, lls, picks


def run_lm_eval(lm, task_manager, name: str) -> tuple[float, float, list[dict]]:
    """(seconds of simple_evaluate, seconds of its loglikelihood call, logged samples by doc_id)."""
    import lm_eval

    # Loading the task reads the JSONL through `datasets`; kept out of the timing like our items.
    task = task_manager.load([name])["tasks"][name]
    # evaluate() calls getattr(lm, "loglikelihood"): an instance attribute takes precedence.
    lm.loglikelihood, ll_seconds = timed(lm.loglikelihood)
    try:
        t = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, log_samples=True,
                                      bootstrap_iters=0, verbosity="WARNING")  # fmt: skip
        total = time.perf_counter() - t
    finally:
        del lm.loglikelihood
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    return total, sum(ll_seconds), samples


# --- comparison --------------------------------------------------------------------------------


def compare(items: list[dict], ours_lls: list[np.ndarray], ours_picks: list[dict], samples: list[dict]) -> dict:
    if [s["doc_id"] for s in samples] != list(range(len(items))):
        raise AssertionError("lm-eval did not log every item exactly once")
    same_requests = all(
        [tuple(a) for a in s["arguments"]] == [(item["query"], " " + c) for c in item["choices"]]
        for item, s in zip(items, samples, strict=True)
    )
    # filtered_resps: one (log-likelihood, is_greedy) pair per choice, in choice order.
    theirs_lls = [np.array([float(r[0]) for r in s["filtered_resps"]]) for s in samples]
    theirs_picks = [mc_predictions(ll, item["choices"]) for ll, item in zip(theirs_lls, items, strict=True)]
    ours = {m: np.array([p[m] == item["label"] for p, item in zip(ours_picks, items, strict=True)], float)
            for m in ("acc", "acc_norm")}  # fmt: skip
    theirs = {m: np.array([s[m] for s in samples], float) for m in ("acc", "acc_norm")}
    diff = np.concatenate([np.abs(a - b) for a, b in zip(ours_lls, theirs_lls, strict=True)])
    pick_mismatch = [i for i, (a, b) in enumerate(zip(ours_picks, theirs_picks, strict=True)) if a != b]
    return {
        "requests_identical": same_requests,
        "ours": {m: float(v.mean()) for m, v in ours.items()},
        "lm_eval": {m: float(v.mean()) for m, v in theirs.items()},
        "acc_mismatches": int((ours["acc"] != theirs["acc"]).sum()),
        "acc_norm_mismatches": int((ours["acc_norm"] != theirs["acc_norm"]).sum()),
        # Stricter than the 0/1 scores: also counts items both sides get wrong with different picks.
        "prediction_mismatches": len(pick_mismatch),
        "prediction_mismatch_items": pick_mismatch[:20],
        "max_abs_ll_diff": float(diff.max()),
        "mean_abs_ll_diff": float(diff.mean()),
    }


def add_speed(result: dict, items: int, ours_s: float, lm_eval_s: float, end_to_end_s: float) -> dict:
    result["ours"].update(seconds=ours_s, items_per_s=items / ours_s)
    result["lm_eval"].update(seconds=lm_eval_s, items_per_s=items / lm_eval_s, seconds_end_to_end=end_to_end_s,
                             items_per_s_end_to_end=items / end_to_end_s)  # fmt: skip
    result["items_per_s_ratio"] = lm_eval_s / ours_s
    result["items_per_s_ratio_end_to_end"] = end_to_end_s / ours_s
    return result


def token_stats(tokenizer, items) -> dict:
    requests = [(item["query"], " " + c) for item in items for c in item["choices"]]
    encoded = encode_requests(tokenizer, requests)
    n_choices = {len(item["choices"]) for item in items}
    return {
        "items": len(items),
        "choices_per_item": n_choices.pop() if len(n_choices) == 1 else sorted(n_choices),
        "requests": len(requests),
        "mean_context_tokens": float(np.mean([len(ctx) for ctx, _ in encoded])),
        "mean_choice_tokens": float(np.mean([len(cont) for _, cont in encoded])),
        "choice_tokens_range": [min(len(c) for _, c in encoded), max(len(c) for _, c in encoded)],
        "choice_chars_range": [min(len(c) for item in items for c in item["choices"]),
                               max(len(c) for item in items for c in item["choices"])],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None, help=f"default: {TOY_CHECKPOINT.relative_to(ROOT)}")
    p.add_argument("--build-tiny", action="store_true", help="build a tiny random model in a temporary folder")
    p.add_argument("--data-dir", type=Path, default=TOY_EVAL, help="the toy eval sets (generated if missing)")
    p.add_argument("--limit", type=int, default=1000, help="items per task")
    p.add_argument(
        "--shots",
        type=int,
        default=4,
        help="solved examples before each item (4: how both studies score base checkpoints)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="best of this many timed runs of each side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from ptft.checkpoints.load import load_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.build_tiny:
            model_dir = build_tiny(tmp / "tiny_model")
        else:
            model_dir = a.model_dir or TOY_CHECKPOINT
            if not (model_dir / "config.json").exists():
                p.error(f"no model in {model_dir}; pass --model-dir or --build-tiny")
        items = {"toy_mc": mc_items(a.limit, a.seed, a.data_dir, a.shots),
                 "toy_mc_varied": varied_mc_items(a.limit, a.seed, a.data_dir, a.shots),
                 "toy_nli": nli_items(a.limit, a.seed, a.data_dir, a.shots)}  # fmt: skip
        task_dir = tmp / "lm_eval_tasks"
        task_dir.mkdir()
        for name, task_items in items.items():
            write_lm_eval_task(task_dir, name, task_items)
        # Only our folder: indexing lm-eval's own ~10k task files takes half a minute.
        task_manager = TaskManager(include_path=str(task_dir), include_defaults=False)

        model, tokenizer = load_pretrained(model_dir, dtype=torch.float32)
        model.eval()
        lm = HFLM(pretrained=str(model_dir), batch_size=a.batch_size, device="cpu", dtype="float32")
        # One untimed pass of each side, so that neither pays for first-call set-up inside its timing.
        for name in TASKS:
            run_ours(model, tokenizer, items[name][: a.batch_size], a.batch_size)
        with torch.no_grad():
            lm.model(torch.tensor([[1, 2, 3]]))

        best = {name: [float("inf")] * 3 for name in TASKS}  # ours, lm-eval's scoring, lm-eval end to end
        per_task = {}
        for _ in range(a.repeat):
            for name in TASKS:
                ours_s, ours_lls, ours_picks = run_ours(model, tokenizer, items[name], a.batch_size)
                total_s, ll_s, samples = run_lm_eval(lm, task_manager, name)
                best[name] = [min(x, y) for x, y in zip(best[name], (ours_s, ll_s, total_s), strict=True)]
                # Both sides are deterministic: any run's scores serve for the comparison.
                per_task[name] = token_stats(tokenizer, items[name]) | compare(items[name], ours_lls, ours_picks,
                                                                               samples)  # fmt: skip
        for name in TASKS:
            add_speed(per_task[name], len(items[name]), *best[name])

    n = sum(len(items[name]) for name in TASKS)
    overall = {
        "items": n,
        "ours": {m: sum(per_task[t]["ours"][m] * len(items[t]) for t in TASKS) / n for m in ("acc", "acc_norm")},
        "lm_eval": {m: sum(per_task[t]["lm_eval"][m] * len(items[t]) for t in TASKS) / n for m in ("acc", "acc_norm")},
        **{k: sum(per_task[t][k] for t in TASKS) for k in ("acc_mismatches", "acc_norm_mismatches",
                                                            "prediction_mismatches")},
        "max_abs_ll_diff": max(per_task[t]["max_abs_ll_diff"] for t in TASKS),
    }  # fmt: skip
    add_speed(overall, n, *(sum(best[t][i] for t in TASKS) for i in range(3)))
    result = {
        "model_dir": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir),
        "tiny_model": a.build_tiny,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": a.batch_size,
        "shots": a.shots,
        "threads": a.threads,
        "repeat": a.repeat,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lm_eval": lm_eval.__version__,
        "lm_eval_max_length": lm.max_length,
        # HFLM encodes with the tokenizer's default special tokens; ours never adds any.
        "lm_eval_adds_special_tokens": lm.tok_encode("x") != tokenizer("x", add_special_tokens=False)["input_ids"],
        "tasks": per_task,
        "overall": overall,
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
