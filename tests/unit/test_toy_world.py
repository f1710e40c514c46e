import random

from ptft.data.prompts import render_prompt
from ptft.data.registry import DATASETS, get_dataset
from ptft.data.tasks import TASK_TYPES
from ptft.toy import tasks, world
from ptft.toy.corpus import documents
from ptft.toy.generate import generate_splits, record_key


def test_nli_labels_follow_the_rule():
    rng = random.Random(0)
    for _ in range(300):
        r = tasks.nli(rng, "home")
        adj_p = r["premise"].split()[3]
        words = r["hypothesis"].split()
        negated = "not" in words
        adj_h = words[-2]
        expected = "contradiction" if negated else ("entailment" if adj_h == adj_p else "neutral")
        assert world.NLI_LABELS[r["label"]] == expected


def test_paraphrase_swaps_roles_exactly_when_not_a_paraphrase():
    rng = random.Random(1)
    for _ in range(300):
        r = tasks.paraphrase(rng, "home")
        s1, s2 = r["sentence1"].split(), r["sentence2"].split()
        never = "never" in s2
        if never:
            s2.remove("never")
        assert world.verb_group(s1[1]) == world.verb_group(s2[1]) and s1[1] != s2[1]
        assert (s1[0] == s2[0] and not never) == (r["label"] == 1)


def test_labels_are_balanced():
    rng = random.Random(2)
    labels = [tasks.nli(rng, "home")["label"] for _ in range(3000)]
    assert all(900 < labels.count(k) < 1100 for k in range(3))


def test_splits_are_disjoint_and_sized():
    spec = get_dataset("toy_nli")
    splits = generate_splits(spec, {"train": 500, "validation": 100, "test": 100}, seed=3)
    keys = {s: {record_key(spec, r) for r in recs} for s, recs in splits.items()}
    assert [len(k) for k in keys.values()] == [500, 100, 100]
    assert not keys["train"] & keys["test"] and not keys["validation"] & keys["test"]


def test_generation_is_deterministic():
    spec = get_dataset("toy_summary")
    a = generate_splits(spec, {"test": 20}, seed=5)
    b = generate_splits(spec, {"test": 20}, seed=5)
    assert a == b


def test_corpus_has_learnable_tasks_only_and_excludes_held_out_items():
    spec = get_dataset("toy_nli")
    held_out = generate_splits(spec, {"test": 50}, seed=9)["test"]
    exclude = {"nli": {record_key(spec, r) for r in held_out}}
    text = "\n".join(
        doc for _, doc in zip(range(3000), documents({"story": 1, "nli": 1, "summary": 1}, 0, exclude), strict=False)
    )
    assert "### Inference:" in text and "### Summary:" in text
    assert "Paraphrase" not in text and "Question" not in text and " yes" not in text
    for r in held_out:
        assert render_prompt(TASK_TYPES["nli"], r, "default").rstrip() not in text


def test_every_toy_dataset_has_an_ood_partner():
    by_type = {}
    for spec in (
        s for s in DATASETS.values() if s.source == "toy" and s.task.kind not in ("chat", "text", "preference")
    ):
        by_type.setdefault(spec.task_type, set()).add(spec.domain)
    assert all(domains == {"home", "wild"} for domains in by_type.values())
