"""Fetching hub checkpoints and loading any checkpoint the stages are given.

A stage gets a checkpoint as a path: either a ``save_pretrained`` folder (toy checkpoints,
fine-tuned models) or a *pointer* ``results/<study>/checkpoints/<name>.json`` written by
``ptft download``. A pointer pins a hub checkpoint to the commit its revision had when it was
fetched (or names a local folder), so later runs load the same weights from the cache even
if the branch moves; with ``HF_HUB_OFFLINE=1`` they never touch the network.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def fetch_checkpoint(entry: dict, revisions: list[str] | None = None) -> dict:
    """Download (or find in the cache) one suite entry; the pointer to write for it."""
    if "path" in entry:
        if not (Path(entry["path"]) / "config.json").exists():
            raise FileNotFoundError(f"checkpoint {entry['name']!r}: no config.json in {entry['path']}")
        return dict(entry)
    from huggingface_hub import snapshot_download

    from ptft.checkpoints.hub import parse_revision, revision_for_step

    revision = entry.get("revision")
    if revision is None:
        if revisions is None:
            raise ValueError(f"checkpoint {entry['name']!r}: step {entry['step']} needs the revision list to resolve")
        revision = revision_for_step(revisions, entry["step"], entry["model"])
    folder = snapshot_download(entry["model"], revision=revision)
    _, tokens = parse_revision(revision)
    pointer = {**entry, "revision": revision, "commit": Path(folder).name}
    if pointer.get("tokens") is None and tokens is not None:
        pointer["tokens"] = tokens
    log.info("checkpoint %s: %s@%s -> commit %s", entry["name"], entry["model"], revision, pointer["commit"])
    return pointer


def _source(path: str | Path) -> tuple[str, dict]:
    """(name or folder for from_pretrained, its keyword arguments)."""
    path = Path(path)
    if path.is_dir():
        return str(path), {}
    pointer = json.loads(path.read_text())
    if "path" in pointer:
        return pointer["path"], {}
    remote_code = pointer.get("trust_remote_code", False)
    return pointer["model"], {"revision": pointer["commit"], "trust_remote_code": remote_code}


def load_pretrained(path: str | Path, dtype=None, device: str = "cpu"):
    """(model, tokenizer) of a checkpoint folder or pointer; the tokenizer always has a pad token.

    A folder holding a LoRA adapter (``ptft_adapter.json`` beside peft's files) is loaded on top
    of the base checkpoint it names, unmerged.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, kwargs = _source(path)
    adapter = Path(name) / "ptft_adapter.json"
    if adapter.exists():
        from peft import PeftModel

        model, _ = load_pretrained(json.loads(adapter.read_text())["base_checkpoint"], dtype, device)
        model = PeftModel.from_pretrained(model, name).to(device)
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs).to(device)
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if tokenizer.pad_token_id is None:
        # Pythia and others ship no pad token; padding is always masked, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
