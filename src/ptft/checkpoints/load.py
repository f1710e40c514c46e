"""Fetching hub checkpoints and loading any checkpoint the stages are given.

A stage gets a checkpoint as a path: either a ``save_pretrained`` folder (toy checkpoints,
fine-tuned models) or a *pointer* ``results/<study>/checkpoints/<name>.json`` written by
``ptft download``. A pointer pins a hub checkpoint to the commit its revision had when it was
fetched (or names a local folder), so later runs load the same weights from the cache even
if the branch moves; with ``HF_HUB_OFFLINE=1`` they never touch the network. A hub id
(``org/name`` or ``org/name@revision``) is loaded as it is (the ``hf`` derivation backend).

A folder is checked before it is loaded: a folder without tokenizer files loads in
``transformers`` as an empty tokenizer of one or two tokens, which trains to a NaN loss
without an error, and a cut-short weights file fails naming no file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

# Files AutoTokenizer builds a vocabulary from: the tokenizers library's own file, or a slow
# tokenizer's (BPE vocab and merges, WordPiece, SentencePiece, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "*.model", "vocab*.json", "vocab.txt", "merges.txt", "bpe.codes", "*.tiktoken")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# load_pretrained's device for a model split by layers over the visible GPUs (evaluate.gpus > 1).
SPLIT = "split"
# A vocabulary this small is none: transformers builds a tokenizer of its special tokens alone
# (1 or 2) for a GPT-2, GPT-NeoX or OLMo config without tokenizer files.
MIN_VOCAB = 16
# org/name or name, optionally @revision (a branch, tag or commit).
_HUB_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@(?P<revision>[\w./-]+))?$")


def missing_files(folder: str | Path) -> list[str]:
    """What a ``save_pretrained`` folder (or a LoRA adapter folder of ptft) lacks to be loaded."""
    folder = Path(folder)
    adapter = (folder / "ptft_adapter.json").exists()
    missing = [] if adapter or (folder / "config.json").exists() else ["config.json"]
    if not any(next(folder.glob(p), None) for p in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, or vocab.json + merges.txt, vocab.txt, tokenizer.model)")
    weights = ADAPTER_WEIGHT_FILES if adapter else WEIGHT_FILES
    if not any((folder / w).exists() for w in weights):
        missing.append(f"weights ({', '.join(weights)})")
    return missing


def check_folder(folder: str | Path, what: str | None = None) -> None:
    """Raise naming ``what`` (e.g. the checkpoint's name) and the folder if it is no complete checkpoint folder."""
    where = f"{what}: " if what else ""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{where}no folder {folder}; give the path of a save_pretrained folder")
    missing = missing_files(folder)
    if missing:
        raise FileNotFoundError(
            f"{where}{folder} has no {'; no '.join(missing)}; copy the complete folder that "
            "model.save_pretrained and tokenizer.save_pretrained wrote (or re-download it)"
        )


def fetch_checkpoint(entry: dict, revisions: list[str] | None = None) -> dict:
    """Download (or find in the cache) one suite entry; the pointer to write for it."""
    if "path" in entry:
        check_folder(entry["path"], f"checkpoint {entry['name']!r} (checkpoints.local)")
        return dict(entry)
    from huggingface_hub import snapshot_download

    from ptft.checkpoints.hub import parse_revision, revision_for_step

    revision = entry.get("revision")
    if revision is None:
        if revisions is None:
            raise ValueError(f"checkpoint {entry['name']!r}: step {entry['step']} needs the revision list to resolve")
        revision = revision_for_step(revisions, entry["step"], entry["model"])
    folder = snapshot_download(entry["model"], revision=revision)
    check_folder(folder, f"checkpoint {entry['name']!r} ({entry['model']}@{revision})")
    _, tokens = parse_revision(revision)
    pointer = {**entry, "revision": revision, "commit": Path(folder).name}
    if pointer.get("tokens") is None and tokens is not None:
        pointer["tokens"] = tokens
    log.info("checkpoint %s: %s@%s -> commit %s", entry["name"], entry["model"], revision, pointer["commit"])
    return pointer


def pretrained_source(path: str | Path) -> tuple[str, dict]:
    """(name or folder for from_pretrained, its keyword arguments) of a folder, pointer or hub id."""
    path = Path(path)
    if path.is_dir():
        return str(path), {}
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint pointer; run the job that writes it (ptft download)")
        pointer = json.loads(path.read_text())
        if "path" in pointer:
            return pointer["path"], {}
        remote_code = pointer.get("trust_remote_code", False)
        return pointer["model"], {"revision": pointer["commit"], "trust_remote_code": remote_code}
    hub = _HUB_ID.match(str(path))
    if hub is None or path.exists():
        raise FileNotFoundError(
            f"{path}: not a checkpoint folder, a pointer file (.json) or a hub id (org/name or org/name@revision)"
        )
    return hub["id"], {"revision": hub["revision"], "trust_remote_code": False}


def _describe(name: str, kwargs: dict) -> str:
    if Path(name).is_dir():
        return f"checkpoint folder {name}"
    return f"hub model {name}@{kwargs.get('revision') or 'main'}"


def _weight_files(name: str) -> str:
    present = [str(p) for w in (*WEIGHT_FILES, *ADAPTER_WEIGHT_FILES) if (p := Path(name) / w).exists()]
    return ", ".join(present) or name


def _is_damaged_weights(e: Exception) -> bool:
    import pickle

    if type(e).__name__ == "SafetensorError" or isinstance(e, EOFError | pickle.UnpicklingError):
        return True
    return isinstance(e, RuntimeError) and "PytorchStreamReader" in str(e)


@contextlib.contextmanager
def _readable_weights(name: str, kwargs: dict):
    """Turn a damaged weights file's error (which names no file) into one naming it and what to do."""
    try:
        yield
    except Exception as e:
        if not _is_damaged_weights(e):
            raise
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if Path(name).is_dir():
            where = _weight_files(name)
            todo = "copy or download it again, or delete the folder and re-run the job that wrote it"
        else:
            where = _describe(name, kwargs)
            todo = "delete its snapshot from the Hugging Face cache (hf cache delete) and run `ptft download` again"
        raise ValueError(
            f"{where}: the weights cannot be read ({reason}); the file is damaged or cut short: {todo}"
        ) from e


def _check_vocabulary(tokenizer, name: str, kwargs: dict) -> None:
    if len(tokenizer) < MIN_VOCAB:
        raise ValueError(
            f"{_describe(name, kwargs)}: its tokenizer has {len(tokenizer)} tokens, no vocabulary (tokenizer files "
            "missing or empty); copy the tokenizer files of the model the checkpoint was trained with into it"
        )


def _load_tokenizer(name: str, kwargs: dict):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{_describe(name, kwargs)}: cannot load its tokenizer ({type(e).__name__}: {first})") from e
    _check_vocabulary(tokenizer, name, kwargs)
    return tokenizer


def _load_model(name: str, kwargs: dict, dtype, device: str):
    from transformers import AutoModelForCausalLM

    try:
        if device == SPLIT:
            return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map="auto", **kwargs)
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs).to(device)
    except OSError as e:
        if Path(name).is_dir() or _is_damaged_weights(e):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FileNotFoundError(
            f"{_describe(name, kwargs)}: cannot be loaded ({first}); fetch it into the Hugging Face cache where "
            "the hub is reachable (`ptft download`), or give a local checkpoint folder"
        ) from e


def load_pretrained(path: str | Path, dtype=None, device: str = "cpu"):
    """(model, tokenizer) of a checkpoint folder, pointer or hub id; the tokenizer always has a pad token.

    A folder holding a LoRA adapter (``ptft_adapter.json`` beside peft's files) is loaded on top
    of the base checkpoint it names, unmerged. ``device`` :data:`SPLIT` spreads the model's layers
    over the visible GPUs (``device_map="auto"``; on a machine without one, the CPU).
    """
    name, kwargs = pretrained_source(path)
    if Path(name).is_dir() or "revision" not in kwargs:
        check_folder(name, None if Path(name) == Path(path) else f"checkpoint pointer {path}")
    adapter = Path(name) / "ptft_adapter.json"
    with _readable_weights(name, kwargs):
        if adapter.exists():
            from peft import PeftModel

            model, _ = load_pretrained(json.loads(adapter.read_text())["base_checkpoint"], dtype, device)
            model = PeftModel.from_pretrained(model, name)
            model = model if device == SPLIT else model.to(device)
        else:
            model = _load_model(name, kwargs, dtype, device)
    tokenizer = _load_tokenizer(name, kwargs)
    if tokenizer.pad_token_id is None:
        # Pythia and others ship no pad token; padding is always masked, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
