"""What made an output: the ptft version and source commit, the study config, the checkpoints.

A record is a flat JSON object: ``ptft_version``, ``git_commit`` and ``git_dirty`` (null outside
a git checkout), ``config_sha256`` (the study config, exported by the workflow in
``PTFT_CONFIG_SHA256``; null when ptft runs outside it), ``checkpoints`` (the pre-training
checkpoints the output's rows come from: ``{name, model, revision, commit}`` for a hub
checkpoint, ``{name, path}`` for a folder) and, for a table built from other tables, ``inputs``
(the distinct builds of those tables). Parquet files carry it in their key-value metadata
(:data:`PARQUET_KEY`), model folders in :data:`FOLDER_FILE`. ``ptft provenance FILE...`` prints it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

PARQUET_KEY = b"ptft.provenance"
FOLDER_FILE = "ptft_provenance.json"
CONFIG_ENV = "PTFT_CONFIG_SHA256"
BUILD_KEYS = ("ptft_version", "git_commit", "git_dirty", "config_sha256")


def config_sha256(config: dict) -> str:
    """sha256 of a (validated) study config as sorted JSON, so that key order does not change it."""
    return sha256_text(json.dumps(config, sort_keys=True, default=str))


def _git(cwd: Path, *args: str) -> str:
    # --no-optional-locks: status must not rewrite the index while jobs read the same checkout.
    out = subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True,
                         check=True, timeout=30)  # fmt: skip
    return out.stdout.strip()


@functools.cache
def source_commit() -> dict:
    """``git_commit`` and ``git_dirty`` of the checkout ptft's code runs from; nulls if it runs from
    no checkout (an installed package, even one inside another repository) or git is missing."""
    here = Path(__file__).resolve().parent
    try:
        _git(here, "ls-files", "--error-unmatch", "--", "__init__.py")
        return {"git_commit": _git(here, "rev-parse", "HEAD"), "git_dirty": bool(_git(here, "status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def current(extra: dict | None = None) -> dict:
    """The record of an output this process writes now; ``extra`` (e.g. its ``checkpoints``) is merged in."""
    from ptft import __version__

    base = {"ptft_version": __version__, **source_commit(), "config_sha256": os.environ.get(CONFIG_ENV)}
    return {**base, **(extra or {})}


def read(path: str | os.PathLike) -> dict:
    """The record of a Parquet file, a model folder, or a JSON file ptft wrote; ``{}`` if it has none."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[PARQUET_KEY]) if PARQUET_KEY in meta else {}
    if path.suffix == ".json":
        return _read_json(path)
    if not path.exists():
        raise FileNotFoundError(path)
    return {}


def _read_folder(folder: Path) -> dict:
    record = _load(folder / FOLDER_FILE)
    adapter = _load(folder / "ptft_adapter.json")
    return {**record, "adapter": adapter} if adapter else record


def _read_json(path: Path) -> dict:
    obj = _load(path)
    if "provenance" in obj:
        return obj["provenance"]
    if obj.get("selected") or "commit" in obj or ("path" in obj and "name" in obj) or "model_dir" in obj:
        return {"checkpoints": checkpoints_of(path)}
    return {}


def _load(path: Path) -> dict:
    if not path.exists():
        return {}
    obj = json.loads(path.read_text())
    return obj if isinstance(obj, dict) else {}


def checkpoint_record(pointer: dict) -> dict:
    """The identity of a checkpoint from its pointer (``results/<study>/checkpoints/<name>.json``) or
    manifest entry: the hub id, revision and commit, or the local folder."""
    if "path" in pointer:
        return {"name": pointer.get("name"), "path": str(pointer["path"])}
    return {key: pointer.get(key) for key in ("name", "model", "revision", "commit")}


def checkpoints_of(path: str | os.PathLike) -> list[dict]:
    """The pre-training checkpoints behind the model at ``path``: a checkpoint pointer, a checkpoint
    folder, a fine-tuned model folder, an lr selection or a run's ``summary.json``."""
    path = Path(path)
    if not path.exists():  # moved or deleted since: its name is all that is known
        return [{"name": path.stem, "path": str(path)}]
    if path.is_dir():
        recorded = _load(path / FOLDER_FILE).get("checkpoints")
        if recorded:
            return recorded
        summary = _load(path.parent / "summary.json")  # a fine-tuned model saved before it recorded its own
        if summary.get("checkpoint") and Path(summary["checkpoint"]).exists():
            return checkpoints_of(summary["checkpoint"])
        return [{"name": path.name, "path": str(path)}]
    obj = _load(path)
    if obj.get("selected"):  # an lr selection points at the chosen run's model
        return checkpoints_of(obj["path"])
    if "model_dir" in obj:  # a run's summary.json
        return checkpoints_of(obj["model_dir"] if Path(obj["model_dir"]).exists() else obj["checkpoint"])
    return [checkpoint_record(obj)]


def for_model(path: str | os.PathLike) -> dict:
    """The ``provenance`` argument for an output computed from the model at ``path``."""
    return {"checkpoints": checkpoints_of(path)}


def union(groups: Iterable[Iterable[dict]]) -> list[dict]:
    """The distinct records of ``groups``, in a stable order."""
    seen = {json.dumps(r, sort_keys=True, default=str): r for group in groups for r in group}
    return [seen[k] for k in sorted(seen)]


def of_inputs(paths: Iterable[str | os.PathLike], checkpoints: Iterable[dict] = ()) -> dict:
    """The ``provenance`` argument for a table computed from the files ``paths``: the union of their
    checkpoints (and ``checkpoints``), and the distinct builds (version, commit, config) that made them."""
    records = [read(p) for p in paths]
    out = {
        "checkpoints": union([*(r.get("checkpoints", []) for r in records), checkpoints]),
        "inputs": union([{k: r.get(k) for k in BUILD_KEYS}] for r in records if r),
    }
    missing = sum(1 for r in records if not r)
    if missing:
        out["inputs_without_provenance"] = missing
    return out


def cmd_provenance(a) -> None:
    missing = [f for f in a.files if not Path(f).exists()]
    if missing:
        raise SystemExit(f"ptft provenance: no such file: {', '.join(missing)}")
    print(json.dumps({f: read(f) for f in a.files}, indent=2, sort_keys=True))


def add_commands(sub) -> None:
    s = sub.add_parser("provenance", help="what made a file: ptft version and commit, config hash, checkpoints")
    s.add_argument("files", nargs="+", metavar="FILE", help="a Parquet table, a model folder, or a JSON record")
    s.set_defaults(func=cmd_provenance)


# -- Identities: digests that change whenever what they identify does.

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_identity(path: str | Path) -> str:
    """A digest that changes whenever the model that ``load_pretrained(path)`` gives would.

    A hub pointer pins a commit, so its model and commit say it all; a pointer to a local folder
    (and the lr selection's pointer) stands for that folder. A folder: the bytes of every file
    but the weights (config, tokenizer, a LoRA adapter's ``ptft_adapter.json``, whose base
    checkpoint counts too), and each weight file's name, size and modification time. Hashing
    gigabytes of weights at every start would cost more than it protects: a weight file that is
    rewritten (a re-trained toy checkpoint, a re-run fine-tune) has a new mtime even when its
    size is the same, and one that is only copied at worst restarts the run.
    """
    path = Path(path)
    if not path.is_dir() and path.suffix != ".json":  # a hub id (org/name@revision) names its weights
        return sha256_text(str(path))
    if not path.is_dir():
        pointer = _load(path)
        if "path" in pointer:
            return checkpoint_identity(pointer["path"])
        return sha256_text(f"{pointer['model']}@{pointer['commit']}")
    parts = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        name = f.relative_to(path).as_posix()
        if f.suffix in WEIGHT_SUFFIXES:
            st = f.stat()
            parts.append(f"{name} {st.st_size} {st.st_mtime_ns}")
        else:
            parts.append(f"{name} {file_digest(f)}")
    adapter = path / "ptft_adapter.json"
    if adapter.exists():
        parts.append(checkpoint_identity(_load(adapter)["base_checkpoint"]))
    return sha256_text("\n".join(parts))
