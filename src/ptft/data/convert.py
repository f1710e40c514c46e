"""Raw records in a dataset's own schema -> canonical records of its task type, checked.

A canonical record has ``idx`` (the row's position in its split, the example id), the task's
canonical fields, and its target: ``label`` (index into the task's label words) for
classification, the target text for generation, ``choices`` + ``label`` (gold index) for
multiple choice, ``messages`` for chat, ``chosen`` (with ``rejected``) for preference pairs.
Every error names the dataset, split, record and field.

Multiple-choice converters build the prompt of the lm-evaluation-harness task of the same
name (its ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target``), so scores are comparable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from ptft.data.registry import DatasetSpec

# Kinds whose gold is an index into the task's labels: label words (TokenProb), or a classifier head's classes.
LABEL_KINDS = ("classification", "sequence_classification")

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names dataset, split, record and field."""


class BadRecord(ValueError):
    """A converter's verdict on one record; the message says what is wrong (the caller adds where)."""


def _where(spec: DatasetSpec, split: str, idx: int | None = None) -> str:
    at = f"dataset {spec.name!r} split {split!r}"
    return at if idx is None else f"{at} record {idx}"


# --- converters for records that renaming columns cannot express -------------------------------


def _tweetqa(r: dict) -> dict:
    # One answer list per tweet; the paper's three-answer template gets the first answers, the rest empty.
    answers = list(r["Answer"]) + ["", "", ""]
    return {"context": r["Tweet"], "answerA": answers[0], "answerB": answers[1], "answerC": answers[2],
            "question": r["Question"]}  # fmt: skip


def _boolq(r: dict) -> dict:
    return {"query": f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", "choices": ["no", "yes"],
            "label": int(r["label"])}  # fmt: skip


def _sciq_mc(r: dict) -> dict:
    return {
        "query": f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:",
        "choices": [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]],
        "label": 3,
    }


def _hellaswag_clean(text: str) -> str:
    # WikiHow artefacts, removed as lm-evaluation-harness's hellaswag preprocess does.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(r: dict) -> dict:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    return {
        "query": _hellaswag_clean(r["activity_label"] + ": " + ctx),
        "choices": [_hellaswag_clean(e) for e in r["endings"]],
        "label": int(r["label"]),
    }


def _lettered(question: str, choices: dict, answer_key: str) -> dict:
    labels = list(choices["label"])
    if answer_key not in labels:
        raise ValueError(f"answerKey {answer_key!r} is not one of the choice labels {labels}")
    return {"query": question, "choices": list(choices["text"]), "label": labels.index(answer_key)}


def _arc(r: dict) -> dict:
    out = _lettered(r["question"], r["choices"], r["answerKey"])
    return {**out, "query": f"Question: {out['query']}\nAnswer:"}


def _openbookqa(r: dict) -> dict:
    return _lettered(r["question_stem"], r["choices"], r["answerKey"])


def _tulu(r: dict) -> dict:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}


# --- preference pairs (Ren & Sutherland's learning dynamics; their release's prompt/response split) ---

HH_ASSISTANT = "\n\nAssistant:"


def _text(r: dict, column: str) -> str:
    value = r[column]
    if not isinstance(value, str):
        raise BadRecord(f"column {column!r} is {'missing' if value is None else type(value).__name__}, expected text")
    return value


def _hh_split(transcript: str, column: str) -> tuple[str, str]:
    """(the prompt up to and including the last ``HH_ASSISTANT``, the response after it)."""
    at = transcript.rfind(HH_ASSISTANT)
    if at < 0:
        raise BadRecord(f"column {column!r} has no {HH_ASSISTANT!r} turn")
    end = at + len(HH_ASSISTANT)
    return transcript[:end], transcript[end:]


def _hh(r: dict) -> dict:
    # Anthropic-HH: two whole transcripts that share every turn but the last assistant reply.
    prompt, chosen = _hh_split(_text(r, "chosen"), "chosen")
    prompt_rejected, rejected = _hh_split(_text(r, "rejected"), "rejected")
    if prompt != prompt_rejected:
        raise BadRecord(f"the prompts of 'chosen' and 'rejected' differ (up to their last {HH_ASSISTANT!r})")
    if not re.sub(r"\n\n(Human|Assistant):", "", prompt).strip():
        raise BadRecord("the prompt is empty (no text besides its 'Human:'/'Assistant:' markers)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _assistant_reply(r: dict, column: str) -> str:
    messages = r[column]
    if messages is None:
        raise BadRecord(f"column {column!r} is missing")
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if not replies:
        raise BadRecord(f"column {column!r} has no assistant turn")
    return replies[-1]


def _ultrafeedback(r: dict) -> dict:
    # UltraFeedback binarized: the prompt in the release's template, each response its pair's assistant turn.
    prompt = _text(r, "prompt")
    if not prompt.strip():
        raise BadRecord("the prompt (column 'prompt') is empty")
    return {"prompt": f"Human: {prompt}\nAssistant:", "chosen": _assistant_reply(r, "chosen"),
            "rejected": _assistant_reply(r, "rejected")}  # fmt: skip


CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "tweetqa": _tweetqa,
    "boolq": _boolq,
    "sciq_mc": _sciq_mc,
    "hellaswag": _hellaswag,
    "arc": _arc,
    "openbookqa": _openbookqa,
    "tulu": _tulu,
    "hh": _hh,
    "ultrafeedback": _ultrafeedback,
}


# --- the generic path: rename columns, map labels, check ------------------------------------------


def required_columns(spec: DatasetSpec) -> list[str]:
    """Dataset columns an entry without a converter reads."""
    task = spec.task
    if spec.converter:
        return []
    cols = [spec.columns.get(f, f) for f in task.fields]
    if task.kind in LABEL_KINDS:
        cols.append(spec.label_column)
    elif task.kind in ("generation", "text"):
        cols.append(spec.columns.get(task.target, task.target))
    return cols + list(spec.extra_columns)


def _label_index(spec: DatasetSpec, value) -> int:
    words = spec.task.labels
    if spec.label_threshold is not None:
        return len(words) - 1 if float(value) > spec.label_threshold else 0
    if spec.label_map is None:
        index = int(value)
        if not 0 <= index < len(words):
            raise KeyError(value)
        return index
    return words.index(spec.label_map[value])


def _renamed(spec: DatasetSpec, r: dict) -> dict:
    task = spec.task
    out = {f: r[spec.columns.get(f, f)] for f in task.fields}
    if task.kind in ("generation", "text"):
        out[task.target] = r[spec.columns.get(task.target, task.target)]
    return out


def to_canonical(
    spec: DatasetSpec, split: str, records: Sequence[dict], indices: Sequence[int], skip_invalid: bool = False
) -> list[dict]:
    """Canonical records of ``records`` (rows ``indices`` of ``split``).

    Bad input raises DataError, or with ``skip_invalid`` is logged and left out.
    """
    out, skipped = [], 0
    for idx, r in zip(indices, records, strict=True):
        try:
            out.append(_canonical_record(spec, split, idx, r))
        except DataError as e:
            if not skip_invalid:
                raise
            skipped += 1
            log.warning("skipping invalid record: %s", e)
    if skipped:
        log.warning("dataset %s split %s: skipped %d invalid records of %d", spec.name, split, skipped, len(records))
    return out


def _canonical_record(spec: DatasetSpec, split: str, idx: int, r: dict) -> dict:
    task = spec.task
    convert = CONVERTERS[spec.converter] if spec.converter else None
    try:
        c = convert(r) if convert else _renamed(spec, r)
        c.update({k: r[k] for k in spec.extra_columns})
    except KeyError as e:
        raise DataError(f"{_where(spec, split, idx)}: field {e.args[0]!r} missing or invalid") from None
    except BadRecord as e:
        raise DataError(f"{_where(spec, split, idx)}: {e}") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{_where(spec, split, idx)}: cannot read the record ({type(e).__name__}: {e})") from None
    if task.kind in LABEL_KINDS:
        raw = r[spec.label_column]
        try:
            c["label"] = _label_index(spec, raw)
        except (KeyError, ValueError, TypeError):
            mapping = spec.label_map or dict(enumerate(task.labels))
            raise DataError(
                f"{_where(spec, split, idx)}: label {raw!r} (column {spec.label_column!r}) is outside "
                f"the label mapping {mapping}"
            ) from None
    _check_texts(spec, split, idx, c)
    return {"idx": int(idx), **c}


def _check_texts(spec: DatasetSpec, split: str, idx: int, c: dict) -> None:
    task = spec.task
    texts = [f for f in task.fields if f not in task.optional_fields]
    if task.kind in ("generation", "text"):
        texts.append(task.target)
    for f in texts:
        value = c[f]
        if not isinstance(value, str):
            if task.kind == "chat":
                continue
            raise DataError(f"{_where(spec, split, idx)}: field {f!r} is {type(value).__name__}, expected text")
        if not value.strip():
            col = spec.columns.get(f, f)
            raise DataError(f"{_where(spec, split, idx)}: field {f!r} (column {col!r}) is empty")
    if task.kind == "multiple_choice":
        choices = c["choices"]
        if len(choices) < 2 or any(not str(x).strip() for x in choices):
            raise DataError(f"{_where(spec, split, idx)}: field 'choices' needs >= 2 non-empty choices, got {choices}")
        if not 0 <= c["label"] < len(choices):
            raise DataError(f"{_where(spec, split, idx)}: gold index {c['label']} outside {len(choices)} choices")
    if task.kind == "preference" and c["chosen"].strip() == c["rejected"].strip():
        raise DataError(f"{_where(spec, split, idx)}: fields 'chosen' and 'rejected' are the same response")
    if task.kind == "chat":
        msgs = c["messages"]
        if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            raise DataError(f"{_where(spec, split, idx)}: field 'messages' has no non-empty assistant turn")


def check_columns(spec: DatasetSpec, split: str, column_names: Sequence[str]) -> None:
    """Fail before touching records if a column the entry reads is absent."""
    missing = [c for c in required_columns(spec) if c not in column_names]
    if missing:
        raise DataError(
            f"{_where(spec, split)}: missing column(s) {missing}; the split has columns {list(column_names)}"
        )
