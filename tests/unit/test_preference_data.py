"""Preference pairs (Ren & Sutherland's learning dynamics): Anthropic-HH helpful-base, UltraFeedback
binarized and the toy set, loaded through the real loading code from files in the exact hub schema."""

import logging

import datasets
import pytest

from helpers.hub_fixtures import HUB_DATASETS, hub_features, write_hub_dataset
from ptft.data import prepare
from ptft.data.convert import DataError
from ptft.data.prepare import eval_and_fewshot, load_raw_split, subsample_train, write_toy_dataset
from ptft.data.prompts import completion, render_prompt
from ptft.data.registry import DatasetSpec, get_dataset
from ptft.data.tasks import TASK_TYPES
from ptft.evaluate.scorers import default_metric
from ptft.toy.generate import generate_splits, record_key

ASSISTANT = "\n\nAssistant:"


def write_rows(folder, key, split, rows):
    """``rows`` (dicts of hub columns) as ``folder/<split>.parquet`` with the hub's exact features."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = {name: [r[name] for r in rows] for name in hub_features(key)}
    datasets.Dataset.from_dict(columns, features=hub_features(key)).to_parquet(str(folder / f"{split}.parquet"))
    return folder


# --- the task type and the registry entries --------------------------------------------------------


def test_preference_task_type():
    task = TASK_TYPES["preference"]
    assert (task.kind, task.fields, task.target, task.formats) == (
        "preference", ("prompt", "chosen", "rejected"), "chosen", {"default": "{prompt}"})  # fmt: skip
    assert default_metric("preference") == "" and task.metric == "" and task.metrics == ()
    record = {"prompt": "Human: hi\nAssistant:", "chosen": " hello", "rejected": " go away"}
    assert render_prompt(task, record, "default") == "Human: hi\nAssistant:"
    assert completion(task, record) == " hello"
    import ptft.evaluate.run  # noqa: F401  the evaluation import path knows nothing of the kind and still loads


def test_registry_entries():
    hh, uf, toy = get_dataset("hh_helpful"), get_dataset("ultrafeedback"), get_dataset("toy_pref")
    assert hh.task.kind == uf.task.kind == toy.task.kind == "preference"
    assert (hh.hub_id, hh.hub_config, hh.data_dir, hh.converter) == ("Anthropic/hh-rlhf", None, "helpful-base", "hh")
    assert (hh.train_split, hh.eval_split, hh.fewshot_split) == ("train", "test", "test")
    assert (uf.hub_id, uf.data_dir, uf.converter) == ("HuggingFaceH4/ultrafeedback_binarized", None, "ultrafeedback")
    assert (uf.train_split, uf.eval_split, uf.fewshot_split) == ("train_prefs", "test_prefs", "test_prefs")
    assert (hh.prompt_keep, uf.prompt_keep, toy.prompt_keep) == ("end", "start", "end")
    assert (hh.domain, uf.domain, toy.domain) == ("assistant-dialogue", "mixed-prompts", "home")
    assert (toy.source, toy.generator, toy.train_split) == ("toy", "preference", "train")
    assert get_dataset("mnli").prompt_keep == "end" and get_dataset("mnli").data_dir is None


def test_prompt_keep_is_validated():
    with pytest.raises(ValueError, match=r"dataset 'x': prompt_keep 'middle' is not one of \('end', 'start'\)"):
        DatasetSpec(name="x", task_type="preference", domain="d", source="hub", prompt_keep="middle")


def test_hub_load_passes_data_dir(tmp_path, monkeypatch):
    folder = write_hub_dataset("hh_rlhf_helpful_base", tmp_path / "hh", rows=4)
    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        return datasets.Dataset.from_parquet(str(folder / f"{kw['split']}.parquet"))

    monkeypatch.setattr(prepare.datasets, "load_dataset", fake_load_dataset)
    assert len(load_raw_split(get_dataset("hh_helpful"), "train")) == 4
    assert calls[-1] == ("Anthropic/hh-rlhf", None, {"split": "train", "revision": None, "data_dir": "helpful-base"})
    record = prepare.fetch(get_dataset("hh_helpful"), None)
    assert record["source"]["data_dir"] == "helpful-base" and set(record["splits"]) == {"train", "test"}
    assert HUB_DATASETS["hh_rlhf_helpful_base"]["data_dir"] == "helpful-base"


# --- Anthropic-HH helpful-base ---------------------------------------------------------------------

HH = "hh_rlhf_helpful_base"
TWO_TURNS = "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is popular.\n\nHuman: Any other?"
HH_ROWS = [
    {"chosen": TWO_TURNS + "\n\nAssistant: Maybe Tom, or Luna.", "rejected": TWO_TURNS + "\n\nAssistant: No."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?", "rejected": "\n\nHuman: Hi\n\nAssistant: What"},
    {"chosen": "\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?",
     "rejected": "\n\nHuman: Tell me a joke.\n\nAssistant: I can't."},
]  # fmt: skip


def test_hh_prompt_is_the_text_up_to_the_last_assistant_turn(tmp_path):
    folder = write_rows(tmp_path / "hh", HH, "train", HH_ROWS)
    spec = get_dataset("hh_helpful")
    records = {r["idx"]: r for r in subsample_train(spec, folder, None, seed=42, fraction=1.0).to_dict("records")}
    assert records[0] == {
        "idx": 0,
        "prompt": TWO_TURNS + "\n\nAssistant:",
        "chosen": " Maybe Tom, or Luna.",
        "rejected": " No.",
    }
    assert records[1]["prompt"] == "\n\nHuman: Hi\n\nAssistant:"
    assert (records[1]["chosen"], records[1]["rejected"]) == (" Hello! How can I help?", " What")
    task = spec.task
    assert render_prompt(task, records[0], "default") == TWO_TURNS + "\n\nAssistant:"
    assert completion(task, records[0]) == " Maybe Tom, or Luna."


def test_hh_fixture_loads_into_canonical_pairs(tmp_path):
    folder = write_hub_dataset(HH, tmp_path / "hh", rows=12, seed=1)
    spec = get_dataset("hh_helpful")
    train = subsample_train(spec, folder, 8, seed=42)
    assert len(train) == 8 and train["idx"].is_unique
    scored, pool = eval_and_fewshot(spec, folder, None, 4, seed=0)
    assert len(pool) == 4 and len(scored) == 8 and not set(pool["idx"]) & set(scored["idx"])
    raw = load_raw_split(spec, "test", folder).to_list()
    for rec in scored.to_dict("records"):
        row = raw[rec["idx"]]
        assert rec["prompt"].endswith(ASSISTANT) and rec["prompt"].count(ASSISTANT) in (1, 2)
        assert rec["prompt"] + rec["chosen"] == row["chosen"] and rec["prompt"] + rec["rejected"] == row["rejected"]
        assert ASSISTANT not in rec["chosen"] and rec["chosen"].startswith(" ") and rec["chosen"] != rec["rejected"]


# --- UltraFeedback binarized -----------------------------------------------------------------------

UF = "ultrafeedback_binarized"


def uf_row(prompt, good, bad, **kw):
    chosen = [{"content": prompt, "role": "user"}, {"content": good, "role": "assistant"}]
    rejected = [{"content": prompt, "role": "user"}, {"content": bad, "role": "assistant"}]
    row = {"prompt": prompt, "prompt_id": f"id-{prompt}", "chosen": chosen, "rejected": rejected,
           "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.0}  # fmt: skip
    return {**row, **kw}


def test_ultrafeedback_prompt_template_and_responses(tmp_path):
    rows = [uf_row("Name a prime number.", "7 is prime.", "Four."), uf_row("Say hi.", "Hi!", "No.")]
    folder = write_rows(tmp_path / "uf", UF, "train_prefs", rows)
    spec = get_dataset("ultrafeedback")
    records = {r["idx"]: r for r in subsample_train(spec, folder, None, seed=0, fraction=1.0).to_dict("records")}
    assert records[0] == {"idx": 0, "prompt": "Human: Name a prime number.\nAssistant:", "chosen": "7 is prime.",
                          "rejected": "Four."}  # fmt: skip
    assert render_prompt(spec.task, records[1], "default") == "Human: Say hi.\nAssistant:"
    assert completion(spec.task, records[1]) == "Hi!"


def test_ultrafeedback_fixture_loads_into_canonical_pairs(tmp_path):
    folder = write_hub_dataset(UF, tmp_path / "uf", rows=12, seed=1)
    spec = get_dataset("ultrafeedback")
    assert len(subsample_train(spec, folder, 8, seed=42)) == 8
    scored, pool = eval_and_fewshot(spec, folder, None, 4, seed=0)
    assert len(pool) == 4 and len(scored) == 8
    raw = load_raw_split(spec, "test_prefs", folder).to_list()
    for rec in scored.to_dict("records"):
        row = raw[rec["idx"]]
        assert rec["prompt"] == f"Human: {row['prompt']}\nAssistant:"
        assert rec["chosen"] == row["chosen"][1]["content"] and rec["rejected"] == row["rejected"][1]["content"]


# --- bad records: named, or skipped and counted ----------------------------------------------------

P = "\n\nHuman: Where is the key?\n\nAssistant:"
SAME = "fields 'chosen' and 'rejected' are the same response"
HH_BAD = {
    "empty chosen": ({"chosen": P, "rejected": P + " Gone."}, r"field 'chosen' \(column 'chosen'\) is empty"),
    "blank rejected": ({"chosen": P + " Here.", "rejected": P + "   "}, r"field 'rejected' .* is empty"),
    "missing rejected": ({"chosen": P + " Here.", "rejected": None}, r"column 'rejected' is missing"),
    "same responses": ({"chosen": P + " Here.", "rejected": P + " Here."}, SAME),
    "no assistant turn": ({"chosen": "\n\nHuman: Where? Here.", "rejected": P + " Gone."},
                          r"column 'chosen' has no '\\n\\nAssistant:' turn"),
    "prompts differ": ({"chosen": P + " Here.", "rejected": "\n\nHuman: Where is the cat?\n\nAssistant: Gone."},
                       "the prompts of 'chosen' and 'rejected' differ"),
    "empty prompt": ({"chosen": "\n\nHuman: \n\nAssistant: Here.", "rejected": "\n\nHuman: \n\nAssistant: Gone."},
                     "the prompt is empty"),
}  # fmt: skip
UF_BAD = {
    "empty chosen": (uf_row("Q?", "", "No."), r"field 'chosen' \(column 'chosen'\) is empty"),
    "missing rejected": (uf_row("Q?", "Yes.", "No.", rejected=None), "column 'rejected' is missing"),
    "same responses": (uf_row("Q?", "Yes.", "Yes."), SAME),
    "empty prompt": (uf_row(" ", "Yes.", "No."), r"the prompt \(column 'prompt'\) is empty"),
    "no assistant turn": (uf_row("Q?", "Yes.", "No.", chosen=[{"content": "Q?", "role": "user"}]),
                          "column 'chosen' has no assistant turn"),
}  # fmt: skip
GOOD = {
    "hh_helpful": HH_ROWS,
    "ultrafeedback": [uf_row(f"Question {i}?", f"Answer {i}.", "No idea.") for i in range(3)],
}
CASES = [("hh_helpful", k) for k in HH_BAD] + [("ultrafeedback", k) for k in UF_BAD]


@pytest.mark.parametrize(("name", "case"), CASES)
def test_bad_record_is_named_or_skipped_and_counted(name, case, tmp_path, caplog):
    spec = get_dataset(name)
    key, (bad, message) = (HH, HH_BAD[case]) if name == "hh_helpful" else (UF, UF_BAD[case])
    rows = list(GOOD[name])
    rows.insert(2, bad)  # raw row 2 of the split
    folder = write_rows(tmp_path / name, key, spec.train_split, rows)
    with pytest.raises(DataError, match=rf"dataset '{name}' split '{spec.train_split}' record 2: {message}"):
        subsample_train(spec, folder, None, seed=42, fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="ptft.data.convert"):
        kept = subsample_train(spec, folder, None, seed=42, fraction=1.0, skip_invalid=True)
    assert sorted(kept["idx"]) == [0, 1, 3]
    assert f"dataset {name} split {spec.train_split}: skipped 1 invalid records of 4" in caplog.text


# --- the toy preference set ------------------------------------------------------------------------


def test_toy_pref_generates_distinct_pairs(tmp_path):
    spec = get_dataset("toy_pref")
    splits = generate_splits(spec, {"train": 20, "validation": 5, "test": 5}, seed=0)
    keys = [record_key(spec, r) for split in splits.values() for r in split]
    assert len(keys) == len(set(keys)) == 30
    for r in (r for split in splits.values() for r in split):
        assert r["prompt"].strip() and r["chosen"].strip() and r["rejected"].strip()
        assert r["chosen"] != r["rejected"]
        assert record_key(spec, r) == (r["prompt"], r["chosen"])
    assert generate_splits(spec, {"train": 20}, seed=0)["train"] == splits["train"]  # deterministic
    write_toy_dataset(spec, {"train": 20, "validation": 5, "test": 5}, 0, tmp_path / "toy_pref")
    train = subsample_train(spec, tmp_path / "toy_pref", 10, seed=42)
    assert len(train) == 10 and set(train.columns) == {"idx", "prompt", "chosen", "rejected"}
    scored, pool = eval_and_fewshot(spec, tmp_path / "toy_pref", None, 2, seed=0)
    assert len(scored) == 5 and len(pool) == 2


def test_toy_tokenizer_texts_are_unchanged():
    """The toy tokenizer (so every toy checkpoint) is trained on these texts: a new task type must not change them.

    The preference format "{prompt}" adds the word "prompt" to them unless ptft.toy.corpus leaves it out.
    """
    import hashlib
    import json

    from ptft.toy.corpus import tokenizer_extra_texts

    texts = tokenizer_extra_texts()
    assert hashlib.sha1(json.dumps(texts).encode()).hexdigest() == "ff38a968aa699feeb8969755a3b08845a3275211"
