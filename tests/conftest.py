import os
import sys
from itertools import chain, islice
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The workflow's shell commands call `ptft`; make the test interpreter's bin directory visible.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-init LLaMA model and toy tokenizer saved in the hub's folder layout."""
    import torch

    from ptft.checkpoints.tokenizer import train_tokenizer
    from ptft.checkpoints.toy_pretrain import build_model
    from ptft.toy.corpus import documents, tokenizer_extra_texts

    torch.manual_seed(0)
    docs = documents({"story": 1, "nli": 1, "summary": 1}, 0, {})
    tok = train_tokenizer(chain(islice(docs, 300), tokenizer_extra_texts()), 1024)
    cfg = {
        "model": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "layers": 2,
            "heads": 2,
            "max_position_embeddings": 1024,
        }
    }
    model = build_model(cfg, tok)
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def peaked(tiny_model_dir):
    """The tiny model with a wide init, so greedy choices are not near-ties a rounding flips, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def snakemake_command(workdir, configfile, *args) -> list[str]:
    """The command that runs the workflow in ``workdir`` (where its results/ go) on ``configfile``, with 2 cores."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        "2",
        # The tests give their own flags; the repository's default profile (profiles/default) is not theirs.
        "--workflow-profile",
        "none",
        *args,
    ]


def run_snakemake(workdir, configfile, *args, timeout=1200, env=None):
    """Run :func:`snakemake_command` to its end; returns the completed process."""
    import subprocess

    cmd = snakemake_command(workdir, configfile, *args)
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def run_study(tmp_path_factory, study) -> tuple:
    """Run a study file end to end in a fresh folder (a file's stem is its study name); its workdir and
    results/<study>. Prints the time it took (``make test-studies`` runs with -s)."""
    import time

    name = Path(study).stem
    workdir = tmp_path_factory.mktemp(name)
    start = time.time()
    out = run_snakemake(workdir, study, timeout=1500)
    assert out.returncode == 0, out.stderr[-4000:]
    print(f"{name} study: {time.time() - start:.0f} s")
    return workdir, workdir / "results" / name


def dry_run(study, directory, *targets):
    """Job counts per rule of a dry run of ``study`` in ``directory``, offline, and its time in seconds."""
    import time

    start = time.time()
    out = run_snakemake(
        directory, study, *targets, "-n", timeout=300, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return job_counts(out.stdout + out.stderr), time.time() - start


def job_counts(text: str) -> dict[str, int]:
    """Snakemake's "Job stats" table as {rule: jobs} ({} when there is nothing to do)."""
    if "Job stats:" not in text:
        return {}
    lines = text.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture
def declared_registry(monkeypatch):
    """The dataset and task-type registries restored after a test that declares datasets (ptft.data.declared)."""
    from ptft.data import declared
    from ptft.data.registry import DATASETS
    from ptft.data.tasks import TASK_TYPES

    datasets, tasks, names = dict(DATASETS), dict(TASK_TYPES), set(declared._DECLARED)
    monkeypatch.delenv(declared.ENV, raising=False)
    yield
    DATASETS.clear(), DATASETS.update(datasets)
    TASK_TYPES.clear(), TASK_TYPES.update(tasks)
    declared._DECLARED.clear(), declared._DECLARED.update(names)
