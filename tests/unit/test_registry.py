"""The dataset registry on local copies in the exact hub schema: load, convert, subsample, render.

Expected prompts are the strings of docs/studies.md (Table 4 of the paper) written out here with the
raw hub columns, so a wrong column mapping or format string fails.
"""

import datasets
import pandas as pd
import pytest

from helpers.hub_fixtures import HUB_DATASETS, write_hub_dataset
from ptft.data.convert import DataError
from ptft.data.prepare import eval_and_fewshot, load_raw_split, subsample_train
from ptft.data.prompts import completion, render_prompt
from ptft.data.registry import DATASETS, get_dataset

# registry name -> hub fixture key
FIXTURE = {
    "mnli": "glue_mnli",
    "mnli_matched": "glue_mnli",
    "mnli_mismatched": "glue_mnli",
    "rte": "glue_rte",
    "gpt3nli": "gpt3nli",
    "paws": "paws",
    "qqp": "qqp",
    "stsb": "stsb",
    "xsum": "xsum",
    "xlsum": "xlsum_english",
    "cnn": "cnn_dailymail",
    "socialiqa": "social_i_qa",
    "sciq": "sciq",
    "sciq_mc": "sciq",
    "tweetqa": "tweet_qa",
    "tulu": "tulu_v2",
    "boolq": "boolq",
    "hellaswag": "hellaswag",
    "arc_easy": "arc_easy",
    "arc_challenge": "arc_challenge",
    "openbookqa": "openbookqa",
    "pubmed": "pubmed_summarization",
    "c4": "c4_en",
    "hh_helpful": "hh_rlhf_helpful_base",
    "ultrafeedback": "ultrafeedback_binarized",
}
HUB = sorted(n for n, s in DATASETS.items() if s.source == "hub")


def test_every_hub_entry_has_a_fixture_with_its_hub_id_and_splits():
    assert sorted(FIXTURE) == HUB
    for name in HUB:
        spec, fixture = get_dataset(name), HUB_DATASETS[FIXTURE[name]]
        assert (spec.hub_id, spec.hub_config) == (fixture["hub_id"], fixture["config"]), name
        assert spec.revision == fixture["revision"], name
        assert spec.data_dir == fixture["data_dir"], name
        assert set(spec.splits) <= set(fixture["splits"]), name


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_data")
    for name in HUB:
        write_hub_dataset(FIXTURE[name], root / name, rows=12, seed=1)
    return root


@pytest.mark.parametrize("name", HUB)
def test_entry_loads_converts_and_renders(name, data_dir):
    spec = get_dataset(name)
    task = spec.task
    if spec.train_split:
        train = subsample_train(spec, data_dir / name, 8, seed=42)
        assert len(train) == 8 and train["idx"].is_unique
    if task.kind == "chat":
        return
    scored, pool = eval_and_fewshot(spec, data_dir / name, None, 4, seed=0)
    assert len(pool) == 4 and len(scored) >= 8
    if task.kind == "text":  # a corpus: no prompt, the text is the completion
        assert all(len(completion(task, r)) > 100 for r in scored.to_dict("records"))
        return
    for record in scored.to_dict("records"):
        for fmt in task.formats:
            assert render_prompt(task, record, fmt).strip()
        assert completion(task, record).strip()
        if task.kind == "classification":
            assert 0 <= record["label"] < len(task.labels)
    if task.kind == "classification":
        assert scored["label"].nunique() > 1  # the mapping keeps the classes apart


def raw_rows(name, data_dir, split):
    return load_raw_split(get_dataset(name), split, data_dir / name).to_list()


def canonical_by_row(name, data_dir):
    spec = get_dataset(name)
    scored, _ = eval_and_fewshot(spec, data_dir / name, None, 2, seed=0)
    raw = raw_rows(name, data_dir, spec.eval_split)
    return [(raw[r["idx"]], r) for r in scored.to_dict("records")]


def test_nli_prompts_and_labels_are_the_papers(data_dir):
    words = ("entailment", "neutral", "contradiction")
    for raw, rec in canonical_by_row("mnli_matched", data_dir):
        task = get_dataset("mnli_matched").task
        assert render_prompt(task, rec, "default") == (
            f"### Input_1: {raw['premise']}\n ### Input_2: {raw['hypothesis']}\n ### Inference: "
        )
        assert render_prompt(task, rec, "instruct") == (
            f"Consider the following texts: Text 1: {raw['premise']} Text 2: {raw['hypothesis']} The relation is "
        )
        assert render_prompt(task, rec, "io") == f"{raw['premise']} {raw['hypothesis']}"
        assert completion(task, rec) == words[raw["label"]]
    # RTE is two-way: not_entailment (1) is scored as "neutral"
    rte = canonical_by_row("rte", data_dir)
    assert {(raw["label"], completion(get_dataset("rte").task, rec)) for raw, rec in rte} == {
        (0, "entailment"),
        (1, "neutral"),
    }
    assert all(rec["premise"] == raw["sentence1"] for raw, rec in rte)


def test_paraphrase_prompts_and_label_mappings(data_dir):
    task = get_dataset("paws").task
    for raw, rec in canonical_by_row("paws", data_dir):
        assert render_prompt(task, rec, "default") == (
            f"### Input_1: {raw['sentence1']}\n ### Input_2: {raw['sentence2']}\n ### Paraphrase Classification: "
        )
        assert render_prompt(task, rec, "instruct") == (
            f"Let's compare the two sentences: Sentence_1: {raw['sentence1']} Sentence_2: {raw['sentence2']} "
            "Are they paraphrasing?: "
        )
        assert completion(task, rec) == ("yes" if raw["label"] == 1 else "no")
    for raw, rec in canonical_by_row("qqp", data_dir):
        assert rec["sentence1"] == raw["text1"] and completion(task, rec) == ("yes" if raw["label"] == 1 else "no")
    stsb = canonical_by_row("stsb", data_dir)
    assert {completion(task, rec) for _, rec in stsb} == {"yes", "no"}
    for raw, rec in stsb:
        assert completion(task, rec) == ("yes" if raw["label"] > 3.5 else "no")


def test_stsb_threshold_is_strictly_above_3_5():
    from ptft.data.convert import to_canonical

    spec = get_dataset("stsb")
    rows = [{"text1": "a", "text2": "b", "label": v} for v in (3.5, 3.51, 0.0, 5.0)]
    labels = [r["label"] for r in to_canonical(spec, "validation", rows, range(4))]
    assert [spec.task.labels[i] for i in labels] == ["no", "yes", "no", "yes"]


def test_summary_and_question_generation_prompts(data_dir):
    summary = get_dataset("xsum").task
    for raw, rec in canonical_by_row("xsum", data_dir):
        assert render_prompt(summary, rec, "default") == f"### Input: {raw['document']}\n ### Summary: "
        assert render_prompt(summary, rec, "instruct") == (
            f"Please read the following text: {raw['document']} Provide a summary: "
        )
        assert completion(summary, rec) == raw["summary"]
    for raw, rec in canonical_by_row("cnn", data_dir):
        assert render_prompt(summary, rec, "io") == raw["article"] and completion(summary, rec) == raw["highlights"]
    for raw, rec in canonical_by_row("xlsum", data_dir):
        assert rec["document"] == raw["text"] and completion(summary, rec) == raw["summary"]
    qg = get_dataset("socialiqa").task
    for raw, rec in canonical_by_row("socialiqa", data_dir):
        assert render_prompt(qg, rec, "default") == (
            f"### Input: {raw['context']}\n ### Answer: Answer A: {raw['answerA']} Answer B: {raw['answerB']}"
            f"Answer C: {raw['answerC']}\n ### Question: "
        )
        assert render_prompt(qg, rec, "instruct") == (
            f"Given the context: {raw['context']} And the answer: Answer A: {raw['answerA']} "
            f"Answer B: {raw['answerB']} Answer C: {raw['answerC']} Generate a suitable question: "
        )
        assert completion(qg, rec) == raw["question"]
    # SciQ as question generation: A is the correct answer, B and C distractors
    for raw, rec in canonical_by_row("sciq", data_dir):
        assert (rec["context"], rec["answerA"], rec["answerB"], rec["answerC"]) == (
            raw["support"], raw["correct_answer"], raw["distractor1"], raw["distractor2"])  # fmt: skip
        assert completion(qg, rec) == raw["question"]
    for raw, rec in canonical_by_row("tweetqa", data_dir):
        assert rec["context"] == raw["Tweet"] and rec["answerA"] == raw["Answer"][0]
        assert completion(qg, rec) == raw["Question"]


def test_multiple_choice_records_follow_lm_eval(data_dir):
    for raw, rec in canonical_by_row("arc_easy", data_dir):
        assert rec["query"] == f"Question: {raw['question']}\nAnswer:"
        assert list(rec["choices"]) == list(raw["choices"]["text"])
        assert raw["choices"]["label"][rec["label"]] == raw["answerKey"]
    for raw, rec in canonical_by_row("boolq", data_dir):
        assert rec["query"] == f"{raw['passage']}\nQuestion: {raw['question']}?\nAnswer:"
        assert list(rec["choices"]) == ["no", "yes"] and rec["label"] == raw["label"]
    for raw, rec in canonical_by_row("sciq_mc", data_dir):
        assert rec["choices"][rec["label"]] == raw["correct_answer"] and len(rec["choices"]) == 4
    for raw, rec in canonical_by_row("hellaswag", data_dir):
        assert rec["label"] == int(raw["label"]) and len(rec["choices"]) == len(raw["endings"])
        assert "[" not in rec["query"] and rec["query"].startswith(raw["activity_label"] + ":")
    for raw, rec in canonical_by_row("openbookqa", data_dir):
        assert rec["query"] == raw["question_stem"]


def test_subsampling_is_the_datasets_recipe(tmp_path):
    folder = write_hub_dataset("paws", tmp_path / "paws", rows=60, seed=3)
    expected = datasets.load_dataset("parquet", data_files={"train": str(folder / "train.parquet")})["train"]
    expected = expected.shuffle(seed=42).select(range(25))
    got = subsample_train(get_dataset("paws"), folder, 25, seed=42)
    assert list(got["sentence1"]) == expected["sentence1"]
    assert list(got["label"]) == expected["label"]  # PAWS 0/1 -> no/yes keeps the index


def test_fraction_subsampling_of_the_chat_mixture(tmp_path):
    folder = write_hub_dataset("tulu_v2", tmp_path / "tulu", rows=40, seed=0)
    got = subsample_train(get_dataset("tulu"), folder, None, seed=42, fraction=0.25)
    assert len(got) == 10
    first = got["messages"].iloc[0]
    assert {m["role"] for m in first} >= {"user", "assistant"}


def test_jsonl_and_sharded_files_load_like_parquet(tmp_path):
    folder = write_hub_dataset("xsum", tmp_path / "xsum", rows=10, seed=0)
    frame = pd.read_parquet(folder / "test.parquet")
    shards = tmp_path / "shards"
    shards.mkdir()
    frame.iloc[:5].to_parquet(shards / "test-00000-of-00002.parquet")
    frame.iloc[5:].to_parquet(shards / "test-00001-of-00002.parquet")
    as_json = tmp_path / "json"
    as_json.mkdir()
    frame.to_json(as_json / "test.jsonl", orient="records", lines=True)
    spec = get_dataset("xsum")
    for source in (shards, as_json):
        assert load_raw_split(spec, "test", source)["document"] == list(frame["document"])


# --- bad input: the error names the dataset, the record and the field ---------------------------


def write_split(folder, split, frame):
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / f"{split}.parquet")
    return folder


def test_missing_column_is_named(tmp_path):
    frame = pd.read_parquet(write_hub_dataset("glue_rte", tmp_path / "rte", rows=6) / "validation.parquet")
    folder = write_split(tmp_path / "bad", "validation", frame.drop(columns="sentence2"))
    with pytest.raises(DataError, match=r"dataset 'rte' split 'validation': missing column\(s\) \['sentence2'\]"):
        load_raw_split(get_dataset("rte"), "validation", folder)


def test_label_outside_the_mapping_is_named(tmp_path):
    frame = pd.read_parquet(write_hub_dataset("glue_mnli", tmp_path / "mnli", rows=6) / "validation_matched.parquet")
    frame.loc[3, "label"] = 7
    folder = write_split(tmp_path / "bad", "validation_matched", frame)
    write_split(folder, "train", pd.read_parquet(tmp_path / "mnli/train.parquet"))
    with pytest.raises(DataError, match=r"dataset 'mnli_matched' split 'validation_matched' record 3: label 7"):
        eval_and_fewshot(get_dataset("mnli_matched"), folder, None, 2, seed=0)


def test_empty_text_is_named_or_skipped(tmp_path):
    frame = pd.read_parquet(write_hub_dataset("xsum", tmp_path / "xsum", rows=8) / "train.parquet")
    frame.loc[5, "summary"] = "  "
    folder = write_split(tmp_path / "bad", "train", frame)
    with pytest.raises(DataError, match=r"dataset 'xsum' split 'train' record 5: field 'summary' .* is empty"):
        subsample_train(get_dataset("xsum"), folder, 8, seed=42)
    kept = subsample_train(get_dataset("xsum"), folder, 8, seed=42, skip_invalid=True)
    assert len(kept) == 7 and 5 not in set(kept["idx"])


def test_missing_split_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset 'paws': no files for split 'train'"):
        load_raw_split(get_dataset("paws"), "train", tmp_path)


def test_bad_multiple_choice_record_is_named(tmp_path):
    frame = pd.read_parquet(write_hub_dataset("arc_easy", tmp_path / "arc", rows=6) / "test.parquet")
    frame.loc[2, "answerKey"] = "Z"
    folder = write_split(tmp_path / "bad", "test", frame)
    write_split(folder, "train", pd.read_parquet(tmp_path / "arc/train.parquet"))
    with pytest.raises(DataError, match=r"dataset 'arc_easy' split 'test' record 2: .*answerKey 'Z'"):
        eval_and_fewshot(get_dataset("arc_easy"), folder, None, 2, seed=0)


def test_hub_dataset_unreachable_offline_names_the_dataset_and_the_fix(tmp_path, monkeypatch):
    import datasets.config as dc
    import huggingface_hub.constants as hc

    monkeypatch.setattr(dc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(dc, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RuntimeError, match=r"dataset 'paws' \(hub google-research-datasets/paws.*ptft download"):
        load_raw_split(get_dataset("paws"), "train")
