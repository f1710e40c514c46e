"""Import results produced elsewhere into the performance schema: Amuro & Char's released tables.

The release has three tables, each with columns ``model_id``, ``eval dataset``, ``Performance``:

- ``all_perf_table.csv`` (and ``std``): the fine-tuned and base models on the paper's own eval sets;
- ``official_eval_table.csv``: the instruction-tuned models (``…_tulu_5epoch_2e-6``) and their base
  checkpoints (``checkpoint-{S}``, ``olmo1b_original_hf``) on lm-evaluation-harness tasks (BoolQ and
  the multiple-choice sets; its ``sciq`` is the multiple-choice SciQ, ptft's ``sciq_mc``);
- ``it_perf_table.csv``: instruction-following evaluations (GSM, MMLU, ToxiGen, TruthfulQA,
  AlpacaEval) that no ptft eval set registers: its rows are read and counted as skipped
  (``eval_set``); ``…_cot_chat`` ids are a prompting variant and skipped (``model_id``).

Each names its run in its model id. Parsing, exactly (:func:`parse_model_id`):

- ``olmo1b_hf_ckpt{S}_{task}_{E}epoch_{lr}[_{K}shots]`` — fine-tuned from checkpoint
  ``step{S}`` on ``task`` for E epochs at learning rate ``lr``; ``olmo1b_hf_main_…`` the same
  from the final checkpoint (``main``, step ``final_step``: 750000 for OLMo-1B);
- ``olmo1b_checkpoint-{S}_original[_hf][_{K}shots]`` (or ``ckpt{S}``) — base checkpoint
  ``step{S}``; ``olmo1b_original[_hf][_{K}shots]`` — the final base checkpoint;
- ``checkpoint-{S}[_{K}shots]`` (no model prefix) — base checkpoint ``step{S}``;
- ``K`` in-context examples (0 when the suffix is absent).

The method is ``instruct`` for ``tulu``, else ``full``. The eval dataset's suffix gives the
format: ``_instruct`` → ``instruct``, ``_inputoutput`` → ``io``, none → ``default``. The relation
of a fine-tuned row comes from the study's ``relations`` table (without one, from
:func:`ptft.plan.relation`); base rows are ``pretraining``.
The metric is the eval set's (``accuracy``, ``rougeL``, ``acc``). ``ci_low``/``ci_high`` are
``value ∓ 1.96 · std`` (the release gives a standard deviation, not an interval); ``n``,
``seed``, ``tokens``, a fine-tuned model's ``ft_step`` and the paired columns are unknown (null);
``train_size`` and ``parent`` are null (the release sweeps no sizes and fine-tunes only
pre-training checkpoints), and a base model's ``ft_step`` is 0.

Rows are dropped, and counted in the returned ``skipped``, when their model id does not parse,
their eval set is not in the registry (the LLMBar sets), their (training task, eval set) pair is
not in the ``relations`` table given (the study's own evaluation matrix), their shot count is not
``shots`` (``all_perf_table.csv`` only: a performance table holds one row per model, eval set,
format and metric, and the paper's main results are 4-shot; the official evaluations are taken
as they are, recorded with 0 shots), or they repeat a row already read (``duplicate``): the
tables are read in the order given, ids with the ``olmo1b_`` prefix before bare ``checkpoint-``
ids, and the first row of a model and eval set is kept — as the paper's notebook looks models
up by their prefixed ids (``all_perf_table.csv`` has ``checkpoint-1000_4shots`` beside
``olmo1b_checkpoint-1000_original_hf_4shots``; ``official_eval_table.csv`` repeats RTE and QQP
for base checkpoints).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ptft.aggregate.performance import PERFORMANCE_COLUMNS, cast_performance
from ptft.data.registry import DATASETS
from ptft.plan import relation as default_relation

_MODEL_ID = re.compile(
    r"^(?:olmo1b_(?:hf_)?(?:ckpt(?P<ckpt>\d+)_|checkpoint-(?P<checkpoint>\d+)_|(?P<main>main)_)?"
    r"(?:(?P<task>[a-z0-9]+)_(?P<epochs>\d+)epoch_(?P<lr>[0-9.e-]+)|original(?:_hf)?)|checkpoint-(?P<bare>\d+))"
    r"(?:_(?P<shots>\d+)shots)?$"
)
# The official evaluation's names of eval sets that ptft registers under another name.
OFFICIAL_EVAL_SETS = {"sciq": "sciq_mc"}
_FORMAT_SUFFIXES = (("_instruct", "instruct"), ("_inputoutput", "io"))


def parse_model_id(model_id: str, final_step: int = 750000) -> dict | None:
    """checkpoint, step, train_task, method, lr, epochs, shots of a released model id; None if it does not parse."""
    m = _MODEL_ID.match(model_id)
    if not m:
        return None
    step = m["ckpt"] or m["checkpoint"] or m["bare"]
    task = m["task"]
    return {
        "checkpoint": f"step{step}" if step else "main",
        "step": int(step) if step else final_step,
        "train_task": task or "none",
        "method": "base" if task is None else "instruct" if task == "tulu" else "full",
        "lr": float(m["lr"]) if task else None,
        "epochs": int(m["epochs"]) if task else None,
        "shots": int(m["shots"] or 0),
    }


def split_eval_dataset(name: str) -> tuple[str, str]:
    """(eval set, format) of a released ``eval dataset`` name."""
    for suffix, fmt in _FORMAT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], fmt
    return name, "default"


def import_released_results(
    paths: str | Path | list, study: str, relations: dict | None = None, shots: int = 4, final_step: int = 750000
) -> tuple[pd.DataFrame, dict]:
    """(performance table, counts of skipped rows by reason) from released tables (module docstring).

    A table with a ``std`` column is read as ``all_perf_table.csv``, one without as an official
    (lm-evaluation-harness) table.
    """
    rows, skipped = [], {"model_id": 0, "eval_set": 0, "shots": 0, "relation": 0, "duplicate": 0}
    for order, path in enumerate([paths] if isinstance(paths, str | Path) else paths):
        raw = pd.read_csv(path, index_col=0).rename(columns={"eval dataset": "eval_dataset"})
        missing = {"model_id", "eval_dataset", "Performance"} - set(raw.columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        official = "std" not in raw.columns
        for record in raw.itertuples(index=False):
            model = parse_model_id(record.model_id, final_step)
            if model is None:
                skipped["model_id"] += 1
                continue
            eval_set, fmt = split_eval_dataset(record.eval_dataset)
            if official:
                eval_set = OFFICIAL_EVAL_SETS.get(eval_set, eval_set)
            if eval_set not in DATASETS:
                skipped["eval_set"] += 1
                continue
            if not official and model["shots"] != shots:
                skipped["shots"] += 1
                continue
            rel = _relation(model, eval_set, relations)
            if rel is None:
                skipped["relation"] += 1
                continue
            task = DATASETS[eval_set].task
            std = None if official else record.std
            rows.append(
                {
                    **{k: model[k] for k in ("checkpoint", "step", "train_task", "method", "lr", "shots")},
                    "study": study,
                    "tokens": None,
                    "seed": None,
                    # The release has no size sweeps nor runs from runs; its fine-tuning steps are unknown.
                    "train_size": None,
                    "parent": None,
                    "ft_step": 0 if model["method"] == "base" else None,
                    "lr_selected": None,
                    "eval_set": eval_set,
                    "eval_task": task.name,
                    "format": fmt,
                    "relation": rel,
                    "metric": task.metric,
                    "value": record.Performance,
                    "ci_low": None if std is None else record.Performance - 1.96 * std,
                    "ci_high": None if std is None else record.Performance + 1.96 * std,
                    "n": 0,  # unknown: nulled below
                    "diff_ci_low": None,
                    "diff_ci_high": None,
                    "_priority": (order, record.model_id.startswith("checkpoint-")),
                }
            )
    frame = pd.DataFrame(rows, columns=[*PERFORMANCE_COLUMNS, "_priority"])
    keys = ["checkpoint", "train_task", "method", "lr", "eval_set", "format", "metric"]
    frame = frame.sort_values("_priority", kind="mergesort")
    duplicate = frame.duplicated(keys, keep="first")
    skipped["duplicate"] = int(duplicate.sum())
    table = cast_performance(frame.loc[~duplicate, list(PERFORMANCE_COLUMNS)])
    table["n"] = pd.array([pd.NA] * len(table), dtype="Int64")
    return table.sort_values(["method", "train_task", "step", "eval_set", "format"], kind="mergesort").reset_index(
        drop=True
    ), skipped


def _relation(model: dict, eval_set: str, relations: dict | None) -> str | None:
    if model["method"] == "base":
        return "pretraining"
    if relations is None:
        return default_relation(model["train_task"], eval_set)
    for rel, sets in relations.get(model["train_task"], {}).items():
        if eval_set in sets:
            return rel
    return None
