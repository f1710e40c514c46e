"""TinyStories-Instruct entries, and the story-feature edits of Jain et al.'s realistic setting.

``roneneldan/TinyStoriesInstruct`` stores one line of text per row; an entry is the run of lines up
to a line ``<|endoftext|>``. Its header lines (``Features: Dialogue, Twist``, ``Words: ...``,
``Summary: ...``, ``Random sentence: ...``, in varying order and not all present) come before a line
that starts with ``Story:``; the story is the rest of that line and every line after it::

    Features: Dialogue, Twist
    Words: quit, oak, gloomy
    Summary: Sara and Ben play in the park ...
    Story: Sara and Ben were in the park. ...
    <|endoftext|>

:func:`entries` turns a split's lines into one record per entry: ``instruction`` (the header lines
as they are), ``story``, ``features`` (comma separated, as in the header) and ``line`` (the row of
the entry's first line, so an entry is traced to the raw split). A study declares a dataset of
these entries with one edit of one feature (``ptft.data.declared``)::

    datasets:
      ts_no_twist: {source: tinystories, feature: Twist, edit: filter}

``all`` keeps every entry; ``only`` keeps the entries that have the feature; ``filter`` drops them
(Jain et al.'s removal by filtering); ``relabel`` keeps every entry and deletes the feature from
the header (removal by relabelling: the stories stay, the instruction never asks for the feature).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

END = "<|endoftext|>"
STORY = "Story:"
FEATURES = "Features:"
EDITS = ("all", "only", "filter", "relabel")
COLUMNS = ("instruction", "story", "features", "line")


class BadEntry(ValueError):
    """An entry that cannot be read; the message names its first row."""


def _features(header: list[str]) -> list[str]:
    for text in header:
        if text.startswith(FEATURES):
            return [f.strip() for f in text[len(FEATURES) :].split(",") if f.strip()]
    return []


def _relabelled(header: list[str], feature: str) -> list[str]:
    out = []
    for text in header:
        if text.startswith(FEATURES):
            kept = [f for f in _features([text]) if f != feature]
            if not kept:
                continue  # a header that only asked for the feature no longer has a Features line
            text = f"{FEATURES} {', '.join(kept)}"
        out.append(text)
    return out


def _entry(rows: list[tuple[int, str]]) -> dict:
    first = rows[0][0]
    at = next((i for i, (_, text) in enumerate(rows) if text.startswith(STORY)), None)
    if at is None:
        raise BadEntry(f"the entry starting at row {first} has no {STORY!r} line")
    header = [text.strip() for _, text in rows[:at] if text.strip()]
    story_lines = [rows[at][1][len(STORY) :].strip()] + [text.rstrip() for _, text in rows[at + 1 :]]
    story = "\n".join(story_lines).strip()
    if not story:
        raise BadEntry(f"the entry starting at row {first} has an empty story")
    if not header:
        raise BadEntry(f"the entry starting at row {first} has no instruction lines before its story")
    return {"header": header, "story": story, "line": first}


def _blocks(lines: Iterable[str]) -> Iterable[list[tuple[int, str]]]:
    block: list[tuple[int, str]] = []
    for row, text in enumerate(lines):
        text = text or ""
        if text.strip() == END:
            if any(t.strip() for _, t in block):
                yield block
            block = []
        else:
            block.append((row, text))
    if any(t.strip() for _, t in block):
        yield block  # the split's last entry may lack its end marker


def entries(lines: Iterable[str], feature: str = "Twist", edit: str = "all", skip_invalid: bool = False,
            where: str = "") -> list[dict]:  # fmt: skip
    """The entries of a split's ``lines`` with ``edit`` of ``feature`` applied (module docstring).

    A bad entry raises :class:`BadEntry` naming ``where`` and its first row, or with ``skip_invalid``
    is left out and counted in the log.
    """
    if edit not in EDITS:
        raise ValueError(f"edit {edit!r} is not one of {', '.join(EDITS)}")
    out, skipped = [], 0
    for block in _blocks(lines):
        try:
            e = _entry(block)
        except BadEntry as err:
            if not skip_invalid:
                raise BadEntry(f"{where}: {err}" if where else str(err)) from None
            skipped += 1
            log.warning("skipping %s: %s", where or "an entry", err)
            continue
        has = feature in _features(e["header"])
        if (edit == "only" and not has) or (edit == "filter" and has):
            continue
        header = _relabelled(e["header"], feature) if edit == "relabel" else e["header"]
        out.append({"instruction": "\n".join(header), "story": e["story"], "features": ", ".join(_features(header)),
                    "line": e["line"]})  # fmt: skip
    if skipped:
        log.warning("%s: skipped %d invalid entries", where or "tinystories", skipped)
    return out


def entries_dataset(ds, spec, split: str, skip_invalid: bool = False):
    """The raw split ``ds`` (one ``text`` line per row) as a ``datasets.Dataset`` of edited entries."""
    import datasets

    from ptft.data.convert import DataError

    if "text" not in ds.column_names:
        raise ValueError(f"dataset {spec.name!r} split {split!r}: no 'text' column (columns: {ds.column_names}); "
                         "TinyStories-Instruct stores one line of text per row")  # fmt: skip
    where = f"dataset {spec.name!r} split {split!r}"
    lines = (text for batch in ds.iter(batch_size=100_000) for text in batch["text"])
    try:
        records = entries(lines, spec.tinystories["feature"], spec.tinystories["edit"], skip_invalid, where)
    except BadEntry as e:
        raise DataError(str(e)) from None
    if not records:
        raise DataError(f"{where}: no entry left after edit {spec.tinystories['edit']!r} of feature "
                         f"{spec.tinystories['feature']!r}")  # fmt: skip
    return datasets.Dataset.from_list(records)
