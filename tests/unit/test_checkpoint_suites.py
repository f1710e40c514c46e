"""Checkpoint suites: revision names, the selection rule, the suite manifest, hub fetch and load."""

import json

import pytest

from conftest import ROOT
from helpers.fake_hub import commit_of, write_model_repo
from ptft.checkpoints.hub import (
    hub_suite,
    local_suite,
    parse_revision,
    read_revision_list,
    select_uniform,
    step_revisions,
)

# The paper's released list of OLMo-1B checkpoints (a copy of the released olmo1b-checkpoints.csv, tests/data/).
OLMO_LIST = ROOT / "tests/data/olmo1b-checkpoints.csv"
PAPER_STEPS = [1000, 18000, 342000, 424000, 505000, 592000, 738000]


def test_revision_names_are_parsed():
    assert parse_revision("step342000-tokens1434B") == (342000, 1434 * 10**9)
    assert parse_revision("step738000-tokens3094B") == (738000, 3094 * 10**9)
    assert parse_revision("step1000") == (1000, None)
    assert parse_revision("step0") == (0, None)
    assert parse_revision("main") == (None, None)
    assert parse_revision("step12-tokens2.5M") == (12, 2_500_000)
    assert step_revisions(["main", "step20", "step3", "step100-tokens1B"]) == ["step3", "step20", "step100-tokens1B"]


def test_uniform_selection_reproduces_the_papers_olmo_checkpoints():
    revisions = read_revision_list(OLMO_LIST)
    assert len(revisions) == 351
    picked = select_uniform(revisions, 5, include_steps=[18000])
    assert [parse_revision(r)[0] for r in picked] == PAPER_STEPS


def test_uniform_selection_rule():
    revisions = [f"step{s}" for s in range(0, 1000, 10)]  # 100 revisions
    picked = [parse_revision(r)[0] for r in select_uniform(revisions, 4)]
    # first + every 25th: positions 24, 49, 74, 99
    assert picked == [0, 240, 490, 740, 990]
    with pytest.raises(ValueError, match="no revision for step 5"):
        select_uniform(revisions, 4, include_steps=[5])
    with pytest.raises(ValueError, match="cannot pick 200"):
        select_uniform(revisions, 200)


def test_hub_suite_from_revisions_steps_and_final(tmp_path):
    manifest = tmp_path / "suite.json"
    hub = {"model": "org/m", "revisions": ["step342000-tokens1434B", "step1000"], "tokens_per_step": 10,
           "final": {"revision": "main", "step": 750000}}  # fmt: skip
    entries = hub_suite(hub, manifest)
    assert [(e["name"], e["step"], e["tokens"], e["revision"]) for e in entries] == [
        ("step342000", 342000, 1434 * 10**9, "step342000-tokens1434B"),
        ("step1000", 1000, 10000, "step1000"),
        ("final", 750000, 7500000, "main"),
    ]
    steps = hub_suite({"model": "org/m", "steps": [5, 7], "final": None}, manifest)
    assert [(e["name"], e["revision"]) for e in steps] == [("step5", None), ("step7", None)]
    assert not manifest.exists()  # names known from the config alone: nothing to resolve
    with pytest.raises(ValueError, match="duplicate"):
        hub_suite({"model": "org/m", "steps": [5, 5]}, manifest)


def test_selection_rule_is_written_to_the_manifest_and_reused(tmp_path):
    listing = tmp_path / "revisions.txt"
    listing.write_text("\n".join(["main"] + [f"step{s}" for s in range(0, 100, 10)]))
    manifest = tmp_path / "results/suite.json"
    hub = {"model": "org/m", "select": {"uniform": 2}, "revision_list": str(listing)}
    first = hub_suite(hub, manifest)
    assert [e["name"] for e in first] == ["step0", "step40", "step90", "final"]
    assert json.loads(manifest.read_text())["model"] == "org/m"
    # The hub moves on (more checkpoints appear): the manifest keeps the resolved suite.
    listing.write_text("\n".join(f"step{s}" for s in range(0, 1000, 10)))
    assert hub_suite(hub, manifest) == first


def test_selection_without_listing_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="ptft download"):
        hub_suite({"model": "org/not-cached", "select": {"uniform": 2}}, tmp_path / "suite.json")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, tiny_model_dir):
    hf_home = tmp_path / "hf"
    write_model_repo(hf_home, "org/tiny", {"step4": tiny_model_dir, "step12-tokens1K": tiny_model_dir,
                                           "main": tiny_model_dir})  # fmt: skip
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    # huggingface_hub reads these at import time; point the running process at the fake cache.
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return hf_home


def test_fetch_pins_the_commit_and_loads_from_the_pointer(fake_hub, tmp_path):
    from ptft.checkpoints.load import load_pretrained
    from ptft.download import download_checkpoint

    listing = tmp_path / "revs.txt"
    listing.write_text("main\nstep4\nstep12-tokens1K\n")
    source = {"model": "org/tiny", "revision_list": str(listing), "manifest": str(tmp_path / "suite.json")}
    entries = hub_suite({"model": "org/tiny", "steps": [12], "final": {"revision": "main", "step": 20}}, tmp_path / "x")
    pointers = [download_checkpoint(e, source, tmp_path / f"{e['name']}.json") for e in entries]
    assert [(p["name"], p["revision"], p["commit"], p["tokens"]) for p in pointers] == [
        ("step12", "step12-tokens1K", commit_of("org/tiny", "step12-tokens1K"), 1000),
        ("final", "main", commit_of("org/tiny", "main"), None),
    ]
    assert json.loads((tmp_path / "step12.json").read_text()) == pointers[0]
    model, tokenizer = load_pretrained(tmp_path / "step12.json")
    assert model.config.num_hidden_layers == 2 and tokenizer.pad_token_id is not None


def test_local_suite_needs_real_folders(tmp_path, tiny_model_dir):
    from ptft.checkpoints.load import fetch_checkpoint

    entries = local_suite([{"name": "a", "path": str(tiny_model_dir), "step": 3}, {"name": "b", "path": str(tmp_path)}])
    assert fetch_checkpoint(entries[0])["path"] == str(tiny_model_dir)
    with pytest.raises(FileNotFoundError, match="checkpoint 'b'"):
        fetch_checkpoint(entries[1])


def test_ptft_download_fetches_a_whole_study(fake_hub, tmp_path):
    import yaml

    from helpers.hub_fixtures import write_hub_dataset
    from ptft.cli import main

    for name, key in {"mnli": "glue_mnli", "rte": "glue_rte"}.items():
        write_hub_dataset(key, tmp_path / "data" / name, rows=5)
    (tmp_path / "revs.txt").write_text("step4\nstep12-tokens1K\nmain\n")
    study = {
        "study": "s",
        "checkpoints": {"suite": "hub", "hub": {"model": "org/tiny", "select": {"uniform": 1},
                                                "revision_list": str(tmp_path / "revs.txt")}},
        "data": {"data_dir": str(tmp_path / "data")},
        "train_tasks": ["mnli"],
        "eval_sets": ["rte"],
    }  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    assert main(["download", "--configfile", str(tmp_path / "s.yaml"), "--results", str(tmp_path / "results")]) == 0
    root = tmp_path / "results/s"
    record = json.loads((root / "downloads/mnli.json").read_text())
    assert record["splits"]["train"]["rows"] == 5 and "premise" in record["splits"]["train"]["columns"]
    assert set(json.loads((root / "downloads/rte.json").read_text())["splits"]) == {"validation", "train"}
    # select: first + 1 evenly spaced (the last of 2 step revisions) + final, resolved from the listing
    pointers = {p.stem: json.loads(p.read_text()) for p in (root / "checkpoints").glob("*.json") if p.stem != "suite"}
    assert {n: p["revision"] for n, p in pointers.items()} == {"step4": "step4", "step12": "step12-tokens1K",
                                                                 "final": "main"}  # fmt: skip
    saved = json.loads((root / "checkpoints/suite.json").read_text())
    assert saved["revisions"] == ["step4", "step12-tokens1K", "main"]
