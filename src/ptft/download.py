"""``ptft download``: fetch a study's datasets and checkpoints ahead of the jobs that read them.

On a cluster whose compute nodes have no internet, run ``ptft download --configfile <study>``
(or ``snakemake download``) on a login node; the jobs then find everything in the Hugging
Face caches (set ``HF_HUB_OFFLINE=1`` for them). Each dataset leaves a record
``results/<study>/downloads/<dataset>.json`` (splits, rows, columns, source) and each
checkpoint a pointer ``results/<study>/checkpoints/<name>.json`` pinning its commit. With
``data.data_dir`` set, datasets are read from that folder instead and only checked.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from ptft import io
from ptft.config import load_study

log = logging.getLogger(__name__)


def dataset_local_dir(data_dir: str | None, name: str) -> str | None:
    return str(Path(data_dir) / name) if data_dir else None


def download_dataset(name: str, data_dir: str | None, out: str | Path, skip_invalid: bool = False) -> dict:
    from ptft.data.prepare import fetch
    from ptft.data.registry import get_dataset

    record = fetch(get_dataset(name), dataset_local_dir(data_dir, name), skip_invalid)
    io.write_json(out, record)
    return record


def download_checkpoint(entry: dict, revisions: dict | None, out: str | Path) -> dict:
    """Fetch one suite entry; ``revisions`` ({model, revision_list, manifest}) resolves step-only entries."""
    from ptft.checkpoints.hub import revision_list
    from ptft.checkpoints.load import fetch_checkpoint

    names = None
    if entry.get("revision") is None and "path" not in entry:
        if not revisions:
            raise ValueError(f"checkpoint {entry['name']!r}: needs --revisions to resolve step {entry['step']}")
        names = revision_list(revisions, Path(revisions["manifest"]))
    pointer = fetch_checkpoint(entry, names)
    io.write_json(out, pointer)
    return pointer


def revisions_source(config: dict, results: str | Path = "results") -> dict | None:
    """What resolves step-only hub entries to revision names: model, optional list file, suite manifest."""
    hub = config["checkpoints"].get("hub")
    if not hub:
        return None
    manifest = Path(results) / config["study"] / "checkpoints" / "suite.json"
    return {"model": hub["model"], "revision_list": hub.get("revision_list"), "manifest": str(manifest)}


def probe_set_models(plan) -> list[tuple[str, str]]:
    """(probe set, hub id) of each probe set whose initial responses come from a hub model outside the suite."""
    out = []
    for name, block in (plan.probe_sets or {}).items():
        model = (block.get("initial") or {}).get("model")
        if "initial" in block["types"] and model and model not in plan.checkpoints and not Path(model).exists():
            out.append((name, model))
    return out


def download_study(configfile: str | Path, results: str | Path = "results") -> None:
    from ptft.checkpoints.load import check_folder
    from ptft.data.registry import get_dataset
    from ptft.plan import build_plan

    config = load_study(configfile)
    plan = build_plan(config, results)
    # Local folders are checked before the long downloads, so a bad one stops the command at once.
    for entry in plan.checkpoint_entries:
        if "path" in entry:
            check_folder(entry["path"], f"checkpoint {entry['name']!r} (checkpoints.local)")
    root = Path(results) / config["study"]
    data_dir = config["data"].get("data_dir")
    skip = config["data"]["invalid_records"] == "skip"
    hub_datasets = [d for d in plan.datasets if get_dataset(d).source == "hub"]
    for name in tqdm(hub_datasets, desc="datasets"):
        download_dataset(name, data_dir, root / "downloads" / f"{name}.json", skip)
    for name, model in probe_set_models(plan):
        # The model that samples a probe set's initial responses (e.g. Pythia-2.8B) is read from the hub cache.
        from huggingface_hub import snapshot_download

        repo, _, revision = model.partition("@")
        log.info("probe_sets.%s.initial.model: fetching %s", name, model)
        snapshot_download(repo, revision=revision or None)
    if plan.pretrained_here:
        return
    revisions = revisions_source(config, results)
    for entry in tqdm(plan.checkpoint_entries, desc="checkpoints"):
        download_checkpoint(entry, revisions, root / "checkpoints" / f"{entry['name']}.json")


def cmd_download(a) -> None:
    if a.configfile:
        download_study(a.configfile, a.results)
    elif a.dataset:
        download_dataset(a.dataset, a.data_dir, a.out, a.invalid == "skip")
    elif a.checkpoint:
        download_checkpoint(a.checkpoint, a.revisions, a.out)
    else:
        raise SystemExit("ptft download: give --configfile, or --dataset/--checkpoint with --out")


def add_commands(sub) -> None:
    from ptft.cli_args import json_arg

    s = sub.add_parser(
        "download", help="pre-fetch a study's datasets and checkpoints into the caches (run on a login node)"
    )
    s.add_argument("--configfile", help="a study file: fetch everything it needs")
    s.add_argument("--results", default="results", help="with --configfile: where results/<study>/ goes")
    s.add_argument("--dataset", help="one dataset (registry name)")
    s.add_argument("--data-dir", default=None, help="with --dataset: local folder of its split files")
    s.add_argument("--invalid", choices=["error", "skip"], default="error", help="with --dataset: bad lines")
    s.add_argument("--checkpoint", type=json_arg, help="one suite entry (JSON, see ptft.checkpoints.hub)")
    s.add_argument("--revisions", type=json_arg, default=None, help='{"model", "revision_list", "manifest"} for steps')
    s.add_argument("--out", help="the record (dataset) or pointer (checkpoint) to write")
    s.set_defaults(func=cmd_download)
