"""A Hugging Face hub cache written by the tests, in the hub's own layout.

``<HF_HOME>/hub/models--<org>--<name>/refs/<revision>`` holds a commit hash and
``snapshots/<commit>/`` the files of that commit: exactly what ``huggingface_hub`` reads with
``HF_HUB_OFFLINE=1``, so the real download and loading code runs against it without a network.
"""

import hashlib
import shutil
from pathlib import Path


def commit_of(repo_id: str, revision: str) -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def write_model_repo(hf_home: Path, repo_id: str, revisions: dict[str, Path]) -> Path:
    """Cache ``revisions`` (revision name -> save_pretrained folder) of model ``repo_id``."""
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for revision, folder in revisions.items():
        sha = commit_of(repo_id, revision)
        (repo / "refs" / revision).write_text(sha)
        snapshot = repo / "snapshots" / sha
        if not snapshot.exists():
            shutil.copytree(folder, snapshot)
    return repo
