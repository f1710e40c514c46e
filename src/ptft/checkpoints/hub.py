"""Checkpoint suites from the Hugging Face hub and from local folders.

A hub suite is a model id plus one of
- ``revisions``: explicit revision names (``step342000-tokens1434B``, ``step1000``, ...);
- ``steps``: pre-training steps, matched against the repository's revision names when resolved;
- ``select``: a rule over the repository's revision list, ``uniform: k`` checkpoints spaced
  evenly by position (every ``n // k``-th of the ``n`` step revisions, ending at the last but
  ``n mod k``), plus the first, plus ``include_steps``;
and optionally ``final`` (default: revision ``main`` as checkpoint ``final``).

Checkpoint names are ``step<N>`` (and ``final``), known from the config alone except for a
``select`` rule, which needs the repository's revision list: it is read from the suite
manifest ``results/<study>/checkpoints/suite.json`` if present, else from ``revision_list`` (a
local file), else from the hub, and is then written to that manifest so later runs resolve the
same checkpoints even when the hub changes. Kept free of heavy imports: the Snakefile reads it.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

_REVISION = re.compile(r"^step(?P<step>\d+)(?:-tokens(?P<tokens>\d+(?:\.\d+)?)(?P<unit>[KMBT]))?$")
_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
FINAL = "final"


def parse_revision(name: str) -> tuple[int | None, int | None]:
    """(step, tokens) of a revision name such as ``step342000-tokens1434B`` or ``step1000``."""
    m = _REVISION.match(name)
    if not m:
        return None, None
    tokens = None
    if m["tokens"]:
        tokens = round(float(m["tokens"]) * _UNITS[m["unit"]])
    return int(m["step"]), tokens


def step_revisions(revisions: list[str]) -> list[str]:
    """The revisions that name a step, ordered by step (other branches such as ``main`` dropped)."""
    named = [(parse_revision(r)[0], r) for r in revisions]
    return [r for step, r in sorted((s, r) for s, r in named if s is not None)]


def select_uniform(revisions: list[str], k: int, include_steps: list[int] = ()) -> list[str]:
    """The first revision, ``k`` evenly spaced ones and those of ``include_steps``, by step.

    With ``n`` step revisions the spaced ones are positions ``stride*i - 1`` for ``i = 1..k``,
    ``stride = n // k``: for OLMo-1B's 351 checkpoints and k=5, steps 342000, 424000, 505000,
    592000 and 738000, the paper's choice.
    """
    ordered = step_revisions(revisions)
    n = len(ordered)
    if k < 1 or n < k:
        raise ValueError(f"select.uniform: cannot pick {k} of {n} step revisions")
    stride = n // k
    picked = {ordered[0], *(ordered[stride * i - 1] for i in range(1, k + 1))}
    by_step = {parse_revision(r)[0]: r for r in ordered}
    for step in include_steps:
        if step not in by_step:
            raise ValueError(f"select.include_steps: no revision for step {step}")
        picked.add(by_step[step])
    return [r for r in ordered if r in picked]


def revision_for_step(revisions: list[str], step: int, model: str) -> str:
    matches = [r for r in revisions if parse_revision(r)[0] == step]
    if len(matches) != 1:
        raise ValueError(f"checkpoints.hub.steps: model {model!r} has {len(matches)} revisions for step {step}")
    return matches[0]


def read_revision_list(path: str | Path) -> list[str]:
    """Revision names from a text file (one per line) or a CSV with a ``Step`` column (as OLMo's list)."""
    path = Path(path)
    if path.suffix == ".csv":
        with path.open() as f:
            return [f"step{int(row['Step'])}" for row in csv.DictReader(f)]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def hub_revisions(model: str) -> list[str]:
    """Branch names of a hub model repository (needs the network)."""
    from huggingface_hub import HfApi

    return [b.name for b in HfApi().list_repo_refs(model).branches]


def _entry(name: str, step: int | None, tokens: int | None, **source) -> dict:
    return {"name": name, "step": step, "tokens": tokens, **source}


def _tokens(step: int | None, parsed: int | None, per_step: int | None) -> int | None:
    if parsed is not None:
        return parsed
    return step * per_step if step is not None and per_step else None


def revision_list(hub: dict, manifest: Path) -> list[str]:
    """The repository's revision list: from the suite manifest, ``revision_list`` or the hub (then saved)."""
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("model") == hub["model"]:
            return saved["revisions"]
    if hub.get("revision_list"):
        revisions = read_revision_list(hub["revision_list"])
    else:
        try:
            revisions = hub_revisions(hub["model"])
        except Exception as e:  # offline, unknown repo, no token: say what to do instead
            raise RuntimeError(
                f"checkpoints.hub: cannot list the revisions of {hub['model']!r} ({type(e).__name__}: {e}). "
                f"Run `ptft download` where the hub is reachable, or give checkpoints.hub.revision_list "
                f"or an explicit checkpoints.hub.revisions list."
            ) from None
    from ptft import io

    io.write_json(manifest, {"model": hub["model"], "revisions": revisions})
    return revisions


def _origin(entry: dict) -> str:
    return f"revision {entry['revision']!r}" if entry.get("revision") else f"step {entry['step']}"


def hub_suite(hub: dict, manifest: Path) -> list[dict]:
    """Checkpoint entries of a hub suite: name, step, tokens, model, and revision or step to match."""
    model, per_step = hub["model"], hub.get("tokens_per_step")
    common = {"model": model, "trust_remote_code": hub.get("trust_remote_code", False)}
    entries = []
    if hub.get("revisions"):
        for rev in hub["revisions"]:
            step, tokens = parse_revision(rev)
            name = f"step{step}" if step is not None else re.sub(r"[^A-Za-z0-9_.-]", "_", rev)
            entries.append(_entry(name, step, _tokens(step, tokens, per_step), revision=rev, **common))
    elif hub.get("steps"):
        for step in hub["steps"]:
            entries.append(_entry(f"step{step}", step, _tokens(step, None, per_step), revision=None, **common))
    elif hub.get("select"):
        rule = hub["select"]
        for rev in select_uniform(revision_list(hub, manifest), rule["uniform"], rule.get("include_steps", [])):
            step, tokens = parse_revision(rev)
            entries.append(_entry(f"step{step}", step, _tokens(step, tokens, per_step), revision=rev, **common))
    elif not (hub.get("revisions") == [] and hub.get("final")):  # revisions: [] and a final: the final alone
        raise ValueError("checkpoints.hub: give one of revisions, steps or select (revisions: [] with final: the "
                         "final checkpoint alone)")  # fmt: skip
    final = hub.get("final", {"revision": "main", "step": None})
    if final:
        step = final.get("step")
        entries.append(_entry(FINAL, step, _tokens(step, None, per_step), revision=final["revision"], **common))
    first = {}
    for e in entries:
        if e["name"] in first:
            a, b = _origin(first[e["name"]]), _origin(e)
            raise ValueError(f"checkpoints.hub: duplicate checkpoint {e['name']!r}, from {a} and {b}; list each once")
        first[e["name"]] = e
    return entries


def local_suite(local: list[dict]) -> list[dict]:
    """Checkpoint entries of local folders; a name given twice is an error naming both entries."""
    seen = {}
    for i, e in enumerate(local):
        if e["name"] in seen:
            j = seen[e["name"]]
            raise ValueError(
                f"checkpoints.local[{i}].name: {e['name']!r} is also the name of checkpoints.local[{j}] "
                f"(paths {local[j]['path']} and {e['path']}); give each checkpoint its own name"
            )
        seen[e["name"]] = i
    return [_entry(e["name"], e.get("step"), e.get("tokens"), path=str(e["path"])) for e in local]
