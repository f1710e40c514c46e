"""Small, synthetic, local copies of Hugging Face hub datasets in the *exact* hub schema.

Loading code written for the real hub datasets can be exercised offline against these files: every split is written
as ``<folder>/<split>.parquet`` through ``datasets.Dataset.from_dict(columns, features=...).to_parquet(path)``, so the
``datasets.Features`` (ClassLabel names, int32/int64/float dtypes, nested list/struct columns) are embedded in the
parquet schema metadata exactly like the hub's own parquet files / ``refs/convert/parquet`` export.

Content is synthetic English built from small word lists, deterministic in ``seed``:

* every text field is non-empty and distinct between the rows of a split (ids are unique across the whole dataset);
* labels cycle through all classes in labelled splits; unlabelled hub splits reproduce the hub's placeholder
  (``-1`` for GLUE/SuperGLUE/SetFit test splits, ``""`` for the HellaSwag test label, ``[]`` for TweetQA test answers);
* generation pairs are related (the summary restates the document, the answer appears in the context, ...).

Schemas follow the hub ``dataset_info`` (README yaml / ``dataset_infos.json`` / loading script ``_info``); the
``source`` and ``verified`` fields of each ``HUB_DATASETS`` entry say where each one was checked.  ``Sequence`` columns
are written with ``datasets.List`` -- that is how ``datasets`` >= 4 reads the hub's ``Sequence`` metadata back.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import random
from collections.abc import Callable
from pathlib import Path

import datasets
from datasets import ClassLabel, Features, List, Value

_S = Value("string")

# --------------------------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------------------------
_NLI3 = ["entailment", "neutral", "contradiction"]
_CHOICES = {"text": List(_S), "label": List(_S)}


def _entry(
    hub_id: str,
    config: str | None,
    splits: list[str],
    features: dict,
    *,
    hub_format: str,
    revision: str | None = None,
    export_config: str | None = None,
    data_dir: str | None = None,
    text_columns: list[str],
    label_column: str | None = None,
    label_values: list | None = None,
    unlabeled_splits: dict[str, object] | None = None,
    source: str,
    verified: bool = True,
    notes: str = "",
) -> dict:
    """One ``HUB_DATASETS`` entry.

    hub_format: "parquet" (plain data files on ``main``), "json" (JSON-lines data files on ``main``) or "script"
    (loading script on ``main``: ``datasets`` >= 4 refuses it, load ``revision="refs/convert/parquet"`` instead, where
    the files live under ``<export_config>/<split>/0000.parquet``).
    data_dir: the repo's sub-folder the entry reads, ``load_dataset(hub_id, data_dir=...)`` (not a config).
    unlabeled_splits: split -> placeholder value the hub stores in ``label_column`` for that split.
    """
    return {
        "hub_id": hub_id,
        "config": config,
        "splits": splits,
        "features": Features(features),
        "hub_format": hub_format,
        "revision": revision,
        "export_config": export_config,
        "data_dir": data_dir,
        "text_columns": text_columns,
        "label_column": label_column,
        "label_values": label_values,
        "unlabeled_splits": unlabeled_splits or {},
        "source": source,
        "verified": verified,
        "notes": notes,
    }


def _arc_entry(config: str) -> dict:
    return _entry(
        "allenai/ai2_arc",
        config,
        ["train", "validation", "test"],
        {"id": _S, "question": _S, "choices": _CHOICES, "answerKey": _S},
        hub_format="parquet",
        text_columns=["id", "question", "choices"],
        label_column="answerKey",
        label_values=["A", "B", "C", "D"],
        source="ai2_arc README dataset_info; 'Convert dataset to Parquet (#4)' deleted ai2_arc.py",
        notes="choices labels are mostly A-D, some rows use 1-4, a few have 3 or 5 choices",
    )


HUB_DATASETS: dict[str, dict] = {
    "glue_mnli": _entry(
        "nyu-mll/glue",
        "mnli",
        ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"],
        {"premise": _S, "hypothesis": _S, "label": ClassLabel(names=_NLI3), "idx": Value("int32")},
        hub_format="parquet",
        text_columns=["premise", "hypothesis"],
        label_column="label",
        unlabeled_splits={"test_matched": -1, "test_mismatched": -1},
        source="nyu-mll/glue README dataset_info (config mnli); glue.py deleted in hub commit 11762d9",
    ),
    "glue_rte": _entry(
        "nyu-mll/glue",
        "rte",
        ["train", "validation", "test"],
        {
            "sentence1": _S,
            "sentence2": _S,
            "label": ClassLabel(names=["entailment", "not_entailment"]),
            "idx": Value("int32"),
        },
        hub_format="parquet",
        text_columns=["sentence1", "sentence2"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="nyu-mll/glue README dataset_info (config rte)",
    ),
    "gpt3nli": _entry(
        "pietrolesci/gpt3_nli",
        None,
        ["train"],
        {"text_a": _S, "text_b": _S, "label": ClassLabel(names=_NLI3), "guid": Value("int64")},
        hub_format="parquet",
        text_columns=["text_a", "text_b"],
        label_column="label",
        source="pietrolesci/gpt3_nli dataset_infos.json (commit 3ec16c2); data/train-00000-of-00001.parquet only",
    ),
    "paws": _entry(
        "google-research-datasets/paws",
        "labeled_final",
        ["train", "validation", "test"],
        {"id": Value("int32"), "sentence1": _S, "sentence2": _S, "label": ClassLabel(names=["0", "1"])},
        hub_format="parquet",
        text_columns=["sentence1", "sentence2"],
        label_column="label",
        source="paws README dataset_info (labeled_final); 'Convert dataset to Parquet (#3)' merged on main",
    ),
    "qqp": _entry(
        "SetFit/qqp",
        None,
        ["train", "validation", "test"],
        {"text1": _S, "text2": _S, "label": Value("int64"), "idx": Value("int64"), "label_text": _S},
        hub_format="json",
        text_columns=["text1", "text2"],
        label_column="label",
        label_values=[0, 1],
        unlabeled_splits={"test": -1},
        source="SetFit/qqp create_dataset.py (glue qqp renamed to text1/text2, label_text 'not duplicate'/"
        "'duplicate'/'unlabeled', written with to_json -> the json loader infers int64)",
        notes="label_text is 'unlabeled' where label == -1 (test split)",
    ),
    "stsb": _entry(
        "SetFit/stsb",
        None,
        ["train", "validation", "test"],
        {"text1": _S, "text2": _S, "label": Value("float64"), "idx": Value("int64"), "label_text": _S},
        hub_format="json",
        text_columns=["text1", "text2"],
        label_column="label",
        unlabeled_splits={"test": -1.0},
        source="SetFit/stsb create_dataset.py (glue stsb renamed to text1/text2, label_text always 'NA', written "
        "with to_json -> the json loader infers float64 for the float32 glue label, int64 for idx)",
        notes="float similarity in [0, 5]; glue's test labels are -1.0",
    ),
    "xsum": _entry(
        "EdinburghNLP/xsum",
        None,
        ["train", "validation", "test"],
        {"document": _S, "summary": _S, "id": _S},
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="default",
        text_columns=["document", "summary", "id"],
        source="huggingface/datasets datasets/xsum README dataset_info; xsum.py still on hub main",
    ),
    "xlsum_english": _entry(
        "csebuetnlp/xlsum",
        "english",
        ["train", "validation", "test"],
        {"id": _S, "url": _S, "title": _S, "summary": _S, "text": _S},
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="english",
        text_columns=["id", "url", "title", "summary", "text"],
        source="xlsum.py _info (Features id/url/title/summary/text); refs/convert/parquet has english/",
        notes="lm-evaluation-harness#3171 (Jul 2025) marks csebuetnlp/xlsum as fixed (no script needed any more); "
        "could not confirm the main-branch layout, the refs/convert/parquet export works either way",
    ),
    "pubmed_summarization": _entry(
        "ccdv/pubmed-summarization",
        "document",
        ["train", "validation", "test"],
        {"article": _S, "abstract": _S},
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="document",
        text_columns=["article", "abstract"],
        source="ccdv/pubmed-summarization README (Data Fields id/article/abstract; 'remove ids' commit 3ddddf4 leaves "
        "article/abstract); pubmed-summarization.py configs section and document; viewer lists both subsets",
        verified=False,
        notes="the script era's export; abstracts average 216 whitespace tokens",
    ),
    "c4_en": _entry(
        "allenai/c4",
        "en",
        ["train", "validation"],
        {"text": _S, "timestamp": _S, "url": _S},
        hub_format="json",
        text_columns=["text", "url"],
        source="allenai/c4 README dataset_info (config en: text, timestamp, url; en/c4-validation.*.json.gz)",
    ),
    "cnn_dailymail": _entry(
        "abisee/cnn_dailymail",
        "3.0.0",
        ["train", "validation", "test"],
        {"article": _S, "highlights": _S, "id": _S},
        hub_format="parquet",
        text_columns=["article", "highlights", "id"],
        source="cnn_dailymail README dataset_info (3.0.0); 'Convert dataset to Parquet (#7)' deleted the script",
    ),
    "social_i_qa": _entry(
        "lighteval/siqa",
        None,
        ["train", "validation"],
        {"context": _S, "question": _S, "answerA": _S, "answerB": _S, "answerC": _S, "label": _S},
        hub_format="parquet",
        text_columns=["context", "question", "answerA", "answerB", "answerC"],
        label_column="label",
        label_values=["1", "2", "3"],
        source="social_i_qa README dataset_info; social_i_qa.py still on main (conversion PR refs/pr/3 not merged)",
        notes="hub page shows no dataset viewer, so a refs/convert/parquet export may be missing; lm-eval switched to "
        "the identical parquet mirror lighteval/siqa (same 6 string columns, train/validation)",
    ),
    "sciq": _entry(
        "allenai/sciq",
        None,
        ["train", "validation", "test"],
        {
            "question": _S,
            "distractor3": _S,
            "distractor1": _S,
            "distractor2": _S,
            "correct_answer": _S,
            "support": _S,
        },
        hub_format="parquet",
        text_columns=["question", "distractor3", "distractor1", "distractor2", "correct_answer", "support"],
        source="allenai/sciq README dataset_info; configs data/{train,validation,test}-*",
    ),
    "tweet_qa": _entry(
        "ucsbnlp/tweet_qa",
        None,
        ["train", "validation", "test"],
        {"Question": _S, "Answer": List(_S), "Tweet": _S, "qid": _S},
        hub_format="parquet",
        text_columns=["Question", "Tweet", "qid"],
        label_column="Answer",
        unlabeled_splits={"test": []},
        source="tweet_qa.py _info (Answer = Sequence(string); test answers are []); 'Convert dataset to Parquet "
        "(#4)' deleted the script",
    ),
    "tulu_v2": _entry(
        "allenai/tulu-v2-sft-mixture",
        None,
        ["train"],
        {"dataset": _S, "id": _S, "messages": List({"role": _S, "content": _S})},
        hub_format="parquet",
        text_columns=["id", "messages"],
        source="allenai/tulu-v2-sft-mixture README dataset_info (messages: list of {role, content})",
    ),
    "boolq": _entry(
        "aps/super_glue",
        "boolq",
        ["train", "validation", "test"],
        {"question": _S, "passage": _S, "idx": Value("int32"), "label": ClassLabel(names=["False", "True"])},
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="boolq",
        text_columns=["question", "passage"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="super_glue boolq dataset_info (mirror hgissbkh/super_glue README, super_glue.py features); "
        "refs/convert/parquet has boolq/{train,validation,test}/0000.parquet",
        notes="aps/super_glue had super_glue.py; lhoestq opened a convert-to-parquet PR (#16, Mar 2025) and "
        "lm-eval loads aps/super_glue without a revision since Jan 2026, so main is probably parquet now (not "
        "confirmed). google/boolq is a different, parquet-only schema: question, answer (bool), passage; "
        "train/validation only",
    ),
    "hellaswag": _entry(
        "Rowan/hellaswag",
        None,
        ["train", "validation", "test"],
        {
            "ind": Value("int32"),
            "activity_label": _S,
            "ctx_a": _S,
            "ctx_b": _S,
            "ctx": _S,
            "endings": List(_S),
            "source_id": _S,
            "split": _S,
            "split_type": _S,
            "label": _S,
        },
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="default",
        text_columns=["ctx_a", "ctx_b", "ctx", "endings", "source_id"],
        label_column="label",
        label_values=["0", "1", "2", "3"],
        unlabeled_splits={"test": ""},
        source="hellaswag dataset_infos.json (TFDS huggingface:hellaswag catalog mirrors it); hellaswag.py still on "
        "main (conversion PR #7 open)",
        notes="'split' holds the original split name: train / val / test",
    ),
    "arc_easy": _arc_entry("ARC-Easy"),
    "arc_challenge": _arc_entry("ARC-Challenge"),
    "openbookqa": _entry(
        "allenai/openbookqa",
        "main",
        ["train", "validation", "test"],
        {"id": _S, "question_stem": _S, "choices": _CHOICES, "answerKey": _S},
        hub_format="parquet",
        text_columns=["id", "question_stem", "choices"],
        label_column="answerKey",
        label_values=["A", "B", "C", "D"],
        source="openbookqa README dataset_info (main); 'Convert dataset to Parquet (#6)' deleted openbookqa.py",
    ),
    "hh_rlhf_helpful_base": _entry(
        "Anthropic/hh-rlhf",
        None,
        ["train", "test"],
        {"chosen": _S, "rejected": _S},
        hub_format="json",
        data_dir="helpful-base",
        text_columns=["chosen", "rejected"],
        source="Anthropic/hh-rlhf README (helpful-base/{train,test}.jsonl.gz, each line {chosen, rejected}: whole "
        "'\n\nHuman: ...\n\nAssistant: ...' transcripts); Ren & Sutherland's release loads "
        "load_dataset('Anthropic/hh-rlhf', data_dir='helpful-base')",
        verified=False,
        notes="no dataset_info yaml on the hub: the json loader infers two string columns; the two transcripts "
        "share every turn but the last assistant reply",
    ),
    "ultrafeedback_binarized": _entry(
        "HuggingFaceH4/ultrafeedback_binarized",
        None,
        ["train_prefs", "train_sft", "test_prefs", "test_sft", "train_gen", "test_gen"],
        {
            "prompt": _S,
            "prompt_id": _S,
            "chosen": List({"content": _S, "role": _S}),
            "rejected": List({"content": _S, "role": _S}),
            "messages": List({"content": _S, "role": _S}),
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
        },
        hub_format="parquet",
        text_columns=["prompt", "prompt_id", "chosen", "rejected"],
        source="HuggingFaceH4/ultrafeedback_binarized README dataset_info (features and the six splits; "
        "data/<split>-*.parquet); the same features in the READMEs of its derived copies",
        verified=False,
        notes="chosen/rejected are [user, assistant] messages; messages == chosen; prompt_id is the sha256 of the "
        "prompt; score_chosen >= score_rejected (GPT-4 ratings 1-10)",
    ),
    # --- the LP-FT study (Tomihari & Sato 2024; workflow/studies/lpft-*.yaml): classifier-head datasets ---
    "superglue_cb": _entry(
        "aps/super_glue",
        "cb",
        ["train", "validation", "test"],
        {
            "premise": _S,
            "hypothesis": _S,
            "idx": Value("int32"),
            "label": ClassLabel(names=["entailment", "contradiction", "neutral"]),
        },
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="cb",
        text_columns=["premise", "hypothesis"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="huggingface/datasets super_glue.py _info (config cb: premise/hypothesis strings, idx int32, "
        "ClassLabel entailment/contradiction/neutral, test label -1); aps/super_glue README dataset_info (cb) has the "
        "same; refs/convert/parquet lists cb/super_glue-{train,validation,test}.parquet",
        notes="250/56/250 rows on the hub; note the label order differs from GLUE MNLI's (contradiction is 1)",
    ),
    "superglue_rte": _entry(
        "aps/super_glue",
        "rte",
        ["train", "validation", "test"],
        {
            "premise": _S,
            "hypothesis": _S,
            "idx": Value("int32"),
            "label": ClassLabel(names=["entailment", "not_entailment"]),
        },
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="rte",
        text_columns=["premise", "hypothesis"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="huggingface/datasets super_glue.py _info (config rte: premise/hypothesis, idx int32, ClassLabel "
        "entailment/not_entailment); refs/convert/parquet lists rte/super_glue-{train,validation,test}.parquet",
        notes="the same examples as GLUE RTE (2490/277/3000) under SuperGLUE's column names premise/hypothesis "
        "(GLUE: sentence1/sentence2, the glue_rte entry)",
    ),
    "superglue_wic": _entry(
        "aps/super_glue",
        "wic",
        ["train", "validation", "test"],
        {
            "word": _S,
            "sentence1": _S,
            "sentence2": _S,
            "start1": Value("int32"),
            "start2": Value("int32"),
            "end1": Value("int32"),
            "end2": Value("int32"),
            "idx": Value("int32"),
            "label": ClassLabel(names=["False", "True"]),
        },
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="wic",
        text_columns=["sentence1", "sentence2"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="huggingface/datasets super_glue.py _info (config wic: word/sentence1/sentence2 strings, start1/start2/"
        "end1/end2/idx int32, ClassLabel False/True); refs/convert/parquet lists wic/super_glue-*.parquet",
        notes="5428/638/1400 rows on the hub; start/end are character offsets of the word's occurrence in each "
        "sentence; the target word repeats across rows (not a distinct column here)",
    ),
    "superglue_wsc_fixed": _entry(
        "aps/super_glue",
        "wsc.fixed",
        ["train", "validation", "test"],
        {
            "text": _S,
            "span1_index": Value("int32"),
            "span2_index": Value("int32"),
            "span1_text": _S,
            "span2_text": _S,
            "idx": Value("int32"),
            "label": ClassLabel(names=["False", "True"]),
        },
        hub_format="script",
        revision="refs/convert/parquet",
        export_config="wsc.fixed",
        text_columns=["text"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="huggingface/datasets super_glue.py _info (configs wsc and wsc.fixed: text, span1_index/span2_index "
        "int32, span1_text/span2_text, idx int32, ClassLabel False/True; wsc.fixed repairs spans that are not "
        "substrings of text); refs/convert/parquet lists wsc.fixed/super_glue-*.parquet",
        notes="554/104/146 rows; span indices are word positions in text.split(); span1 is the candidate noun "
        "phrase, span2 the pronoun; the LP-FT release loaded config wsc (same texts, unrepaired spans)",
    ),
    "glue_cola": _entry(
        "nyu-mll/glue",
        "cola",
        ["train", "validation", "test"],
        {"sentence": _S, "label": ClassLabel(names=["unacceptable", "acceptable"]), "idx": Value("int32")},
        hub_format="parquet",
        text_columns=["sentence"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="huggingface/datasets datasets/glue/README.md dataset_info (config cola: sentence, label "
        "unacceptable/acceptable, idx int32; 8551/1043/1063) and glue.py (test labels -1)",
    ),
    "glue_sst2": _entry(
        "nyu-mll/glue",
        "sst2",
        ["train", "validation", "test"],
        {"sentence": _S, "label": ClassLabel(names=["negative", "positive"]), "idx": Value("int32")},
        hub_format="parquet",
        text_columns=["sentence"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="huggingface/datasets datasets/glue/README.md dataset_info (config sst2: sentence, label "
        "negative/positive, idx int32; 67349/872/1821) and glue.py (test labels -1)",
    ),
    "glue_mrpc": _entry(
        "nyu-mll/glue",
        "mrpc",
        ["train", "validation", "test"],
        {
            "sentence1": _S,
            "sentence2": _S,
            "label": ClassLabel(names=["not_equivalent", "equivalent"]),
            "idx": Value("int32"),
        },
        hub_format="parquet",
        text_columns=["sentence1", "sentence2"],
        label_column="label",
        unlabeled_splits={"test": -1},
        source="huggingface/datasets datasets/glue/README.md dataset_info (config mrpc: sentence1, sentence2, label "
        "not_equivalent/equivalent, idx int32; 3668/408/1725) and glue.py _generate_example_mrpc_files (test "
        "label -1 although the source file has the labels)",
        notes="train/validation idx is the row of the combined MRPC training file, so it has gaps",
    ),
    **{
        f"boss_{name}": _entry(
            f"PLACEHOLDER-no-hub-copy/boss-sentiment-{name}",
            None,
            splits,
            {"Text": _S, "Label": Value("int64")},
            hub_format="json",
            text_columns=["Text"],
            label_column="Label",
            label_values=[0, 1, 2],
            source="no hub copy found (searched the hub docs and code for BOSS / OOD_NLP): the BOSS release "
            "(github.com/lifan-yuan/OOD_NLP, a Google Drive archive) writes datasets/process/SentimentAnalysis/"
            f"{name}/<split>.tsv with src/utils/utils_processing.save_data: header Text, Label; labels 0 negative, "
            "1 positive, 2 neutral (the LP-FT release's tasks/ood/dataset.py reads them the same way). This "
            "fixture is the folder a study reads under data.data_dir: each TSV re-written as <split>.jsonl "
            "(pandas read_csv(sep='\\t') then to_json(orient='records', lines=True) gives string Text, int64 Label)",
            verified=False,
            notes=notes,
        )
        for name, splits, notes in [
            ("amazon", ["train", "test"], "in-domain: 30000 train (10000 per class), 38905 test; stars 1/3/5"),
            ("dynasent", ["test"], "an OOD test set of the amazon task"),
            ("semeval", ["test"], "an OOD test set of the amazon task"),
            ("sst5", ["test"], "an OOD test set of the amazon task"),
        ]
    },
    "pubmed_rct20k": _entry(
        "armanc/pubmed-rct20k",
        None,
        ["train", "validation", "test"],
        {"abstract_id": _S, "label": _S, "text": _S, "sentence_id": Value("int64")},
        hub_format="json",
        text_columns=["text"],
        label_column="label",
        label_values=["background", "conclusions", "methods", "objective", "results"],
        source="armanc/pubmed-rct20k tree (train.jsonl, dev.jsonl -> split validation, test.jsonl; the parquet "
        "export names json-{train,validation,test}.parquet); columns and dtypes from its copy "
        "pietrolesci/pubmed-20k-rct, whose README says it is the same data with label renamed labels "
        "(abstract_id string, labels string, text string, sentence_id int64; 176642/29672/29578), and whose later "
        "class_encode_column gave the names background/conclusions/methods/objective/results",
        verified=False,
        notes="armanc's own dataset_infos.json was not read: the lowercase label strings are inferred from the "
        "copy's ClassLabel names; the PubMed 20k RCT text files use upper case (BACKGROUND, ...) and @ for digits",
    ),
}


def hub_features(key: str) -> datasets.Features:
    """The hub ``datasets.Features`` of ``key`` (a copy, safe to mutate)."""
    return copy.deepcopy(HUB_DATASETS[key]["features"])


# --------------------------------------------------------------------------------------------------------------------
# Synthetic text
# --------------------------------------------------------------------------------------------------------------------
_NAMES = [
    "Alice", "Bruno", "Chen", "Dana", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara",
]  # fmt: skip
_VERBS = [  # (past tense == past participle, base form)
    ("painted", "paint"), ("repaired", "repair"), ("visited", "visit"), ("cleaned", "clean"),
    ("sold", "sell"), ("built", "build"), ("opened", "open"), ("found", "find"), ("carried", "carry"),
    ("measured", "measure"), ("borrowed", "borrow"), ("photographed", "photograph"),
]  # fmt: skip
_ADJS = ["old", "red", "small", "wooden", "quiet", "broken", "tall", "blue", "heavy", "bright", "narrow", "green",
         "famous", "empty", "round", "golden"]  # fmt: skip
_NOUNS = ["bridge", "bicycle", "library", "boat", "fence", "bakery", "roof", "kite", "museum", "wall", "station",
          "map", "lantern", "piano", "garden", "clock"]  # fmt: skip
_PLACES = ["near the river", "in the morning", "after the storm", "before lunch", "with two friends", "on Sunday",
           "during the festival", "in the north district", "under a grey sky", "at the harbor", "last winter",
           "before sunset"]  # fmt: skip
_TOWNS = ["Ashford", "Bellmoor", "Cranwick", "Dunmere", "Elmstead", "Fairholt", "Glenby", "Harrowgate"]
_REASONS = ["for a school project", "to surprise a neighbor", "because the council asked", "to win a bet",
            "for the town fair", "to help a cousin"]  # fmt: skip
_PROPERTIES = ["its length", "its mass", "its temperature", "its color", "its volume", "its hardness",
               "its density", "its texture"]  # fmt: skip
_OUTCOMES = ["was moved indoors", "became warmer", "changed color", "stayed the same", "got lighter",
             "was covered with dust", "made a loud noise", "cast a longer shadow"]  # fmt: skip
_ACTIVITIES = ["Washing a car", "Painting a fence", "Baking bread", "Fixing a bicycle", "Planting a tree",
               "Cleaning windows", "Playing the piano", "Flying a kite"]  # fmt: skip
_SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a concise assistant. Answer in one short paragraph.",
                   "You are a friendly tutor who explains things step by step."]  # fmt: skip
_TULU_SOURCES = ["flan_v2", "cot", "oasst1", "lima", "gpt4_alpaca", "code_alpaca", "sharegpt", "wizardlm",
                 "open_orca", "science.scierc_ner", "hard_coded"]  # fmt: skip
_XLSUM_SECTIONS = ["world-europe", "business", "technology", "science-environment", "uk-england-london", "health"]
_ARC_PREFIXES = ["Mercury_", "MCAS_2004_8_", "NYSEDREGENTS_2013_4_", "ACTAAP_2008_7_", "TIMSS_2011_4_pg"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Topic:
    """A small event: ``<name> <past> the <obj> <place>``, plus a second person/object for variations."""

    def __init__(self, rng: random.Random):
        self.name, self.other = rng.sample(_NAMES, 2)
        self.past, self.base = rng.choice(_VERBS)
        self.past2, self.base2 = rng.choice(_VERBS)
        adj, adj2 = rng.sample(_ADJS, 2)
        noun, noun2 = rng.sample(_NOUNS, 2)
        self.obj, self.obj2 = f"{adj} {noun}", f"{adj2} {noun2}"
        self.noun = noun
        self.place, self.place2 = rng.sample(_PLACES, 2)
        self.town = rng.choice(_TOWNS)
        self.reason = rng.choice(_REASONS)
        self.days = rng.randint(2, 30)
        self.helpers = rng.randint(3, 40)

    @property
    def sentence(self) -> str:
        return f"{self.name} {self.past} the {self.obj} {self.place}."


class _Gen:
    """Deterministic source of topics and unique ids for one dataset key."""

    def __init__(self, seed: int, key: str):
        self.rng = random.Random(f"hub-fixture:{seed}:{key}")
        self.counter = itertools.count()

    def topic(self) -> _Topic:
        return _Topic(self.rng)

    def next_id(self) -> int:
        return next(self.counter)

    def hexid(self, n: int) -> str:
        return hashlib.sha1(f"{self.rng.random()}:{self.next_id()}".encode()).hexdigest()[:n]


# Row builders: (gen, i, split, labelled) -> row dict.  ``i`` is the row index within the split.
_RowFn = Callable[[_Gen, int, str, bool], dict]


def _nli_hypothesis(t: _Topic, label: int) -> str:
    if label == 0:  # entailment
        return f"{t.name} {t.past} the {t.obj}."
    if label == 1:  # neutral
        return f"{t.name} {t.past} the {t.obj} {t.reason}."
    return f"{t.name} did not {t.base} the {t.obj}."  # contradiction


def _mnli(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 3
    premise = f"{t.name} {t.past} the {t.obj} {t.place}, and {t.other} {t.past2} the {t.obj2} afterwards."
    return {"premise": premise, "hypothesis": _nli_hypothesis(t, label), "label": label if labelled else -1, "idx": i}


def _rte(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 2
    s1 = f"{t.sentence} The work took {t.days} days and {t.helpers} people from {t.town} helped."
    s2 = f"{t.name} {t.past} the {t.obj}." if label == 0 else f"{t.other} {t.past} the {t.obj} alone."
    return {"sentence1": s1, "sentence2": s2, "label": label if labelled else -1, "idx": i}


def _gpt3nli(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 3
    text_a = f"{_cap(t.place)}, {t.name} {t.past} the {t.obj} while {t.other} watched."
    return {"text_a": text_a, "text_b": _nli_hypothesis(t, label), "label": label, "guid": 1000 + g.next_id()}


def _paws(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 2
    s1 = f"{_cap(t.place)}, {t.name} {t.past} the {t.obj} with {t.other}."
    if label == 1:  # paraphrase: same meaning, different word order
        s2 = f"{t.name} {t.past} the {t.obj} with {t.other} {t.place}."
    else:  # word-scrambled: same bag of words, roles swapped
        s2 = f"{_cap(t.place)}, {t.other} {t.past} the {t.obj} with {t.name}."
    return {"id": 1 + g.next_id(), "sentence1": s1, "sentence2": s2, "label": label}


def _qqp(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = (i + 1) % 2
    text1 = f"Why did {t.name} {t.base} the {t.obj} {t.place}?"
    if label == 1:
        text2 = f"What was the reason {t.name} {t.past} the {t.obj} {t.place}?"
    else:
        text2 = f"Where did {t.name} {t.base2} the {t.obj2}?"
    if not labelled:
        return {"text1": text1, "text2": text2, "label": -1, "idx": i, "label_text": "unlabeled"}
    return {"text1": text1, "text2": text2, "label": label, "idx": i,
            "label_text": ["not duplicate", "duplicate"][label]}  # fmt: skip


_STSB_SCORES = [0.0, 0.8, 1.6, 2.4, 3.2, 4.0, 4.6, 5.0]


def _stsb(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    score = _STSB_SCORES[i % len(_STSB_SCORES)]
    text1 = t.sentence
    if score >= 4.0:
        text2 = f"The {t.obj} was {t.past} by {t.name} {t.place}."
    elif score >= 2.0:
        text2 = f"{t.name} {t.past} a different {t.obj2} {t.place2}."
    else:
        text2 = f"{t.other} {t.past2} the {t.obj2} {t.place2}."
    return {"text1": text1, "text2": text2, "label": score if labelled else -1.0, "idx": i, "label_text": "NA"}


def _story(t: _Topic) -> list[str]:
    return [
        f"{t.name} {t.past} the {t.obj} in {t.town} {t.place}, local officials said.",
        f"The work took {t.days} days and involved {t.helpers} volunteers.",
        f"Residents said the {t.noun} had been neglected for years before {t.name} stepped in.",
        f"{t.other} said the town now hopes to {t.base2} the {t.obj2} next year.",
    ]


def _xsum(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    summary = f"{t.name} has {t.past} the {t.obj} in {t.town} with the help of {t.helpers} volunteers."
    return {"document": "\n".join(_story(t)), "summary": summary, "id": str(30000000 + 37 * g.next_id())}


def _xlsum(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    art_id = f"{g.rng.choice(_XLSUM_SECTIONS)}-{40000000 + 37 * g.next_id()}"
    return {
        "id": art_id,
        "url": f"https://www.bbc.com/news/{art_id}",
        "title": f"{t.town}: {t.name} {t.past} the {t.obj}",
        "summary": f"The {t.obj} in {t.town} has been {t.past} by {t.name} after {t.days} days of work.",
        "text": " ".join(_story(t)),
    }


def _cnn(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    article = f"({t.town.upper()}, CNN) -- " + " ".join(_story(t))
    highlights = "\n".join(
        [f"{t.name} {t.past} the {t.obj} in {t.town} .", f"{t.helpers} volunteers helped over {t.days} days ."]
    )
    return {"article": article, "highlights": highlights, "id": g.hexid(40)}


_SIQA_QUESTIONS = [
    ("Why did {n} do this?", ["wanted to keep the {o} safe", "needed money for the {o}", "was bored of the {o}"]),
    ("What will {n} want to do next?", ["show the {o} to {x}", "rest after the {o}", "forget about the {o}"]),
    ("How would {n} feel afterwards?", ["proud of the {o}", "tired from the {o}", "upset about the {o}"]),
]


def _pubmed(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    abstract = (f"Background: {t.name} and colleagues studied {t.helpers} patients in {t.town} over {t.days} days. "
                f"Methods: the {t.obj} was measured before and after treatment. "
                f"Results: the {t.noun} {t.past} in {t.helpers // 2 + 1} patients. "
                f"Conclusions: the treatment may {t.base2} the {t.obj2} in similar cohorts.")  # fmt: skip
    return {"article": "\n".join(_story(t)) + "\n" + abstract, "abstract": abstract}


def _c4(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    slug = f"{t.town.lower()}-{g.next_id()}"
    return {"text": " ".join(_story(t)), "timestamp": f"2019-04-{1 + i % 28:02d}T08:{i % 60:02d}:00Z",
            "url": f"https://news.example.org/{slug}"}  # fmt: skip


def _siqa(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    question, answers = _SIQA_QUESTIONS[g.rng.randrange(len(_SIQA_QUESTIONS))]
    label = i % 3
    correct, *wrong = [a.format(o=t.obj, x=t.other) for a in answers]
    options = wrong[:label] + [correct] + wrong[label:]  # the correct answer sits at index ``label``
    row = {"context": f"{t.name} {t.past} the {t.obj} {t.place}.", "question": question.format(n=t.name)}
    row.update({"answerA": options[0], "answerB": options[1], "answerC": options[2], "label": str(label + 1)})
    return row


def _sciq(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    adj_nouns = [f"{a} {n}" for a, n in zip(g.rng.sample(_ADJS, 4), g.rng.sample(_NOUNS, 4), strict=True)]
    correct, d1, d2, d3 = [t.obj] + [x for x in adj_nouns if x != t.obj][:3]
    return {
        "question": f"Which object did {t.name} {t.base} {t.place}?",
        "distractor3": d3,
        "distractor1": d1,
        "distractor2": d2,
        "correct_answer": correct,
        "support": f"{t.name} {t.past} the {correct} {t.place}. The {correct} was {t.days} years old.",
    }


def _tweet_qa(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    answers = [f"the {t.obj}", t.obj] if i % 3 == 0 else [f"the {t.obj}"]
    return {
        "Question": f"what did {t.name.lower()} {t.base} {t.place}?",
        "Answer": answers if labelled else [],
        "Tweet": f"Big day in {t.town}: {t.name} {t.past} the {t.obj} {t.place}! #{t.town}{t.noun.title()}",
        "qid": g.hexid(32),
    }


def _tulu(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    source = _TULU_SOURCES[i % len(_TULU_SOURCES)]
    turns = [
        (f"Can you explain why {t.name} {t.past} the {t.obj} {t.place}?",
         f"{t.name} {t.past} the {t.obj} {t.reason}; it took {t.days} days."),
        (f"What should {t.name} do with the {t.obj} next?",
         f"{t.name} could {t.base2} the {t.obj2} {t.place2} and ask {t.other} for help."),
        (f"Summarize our conversation about {t.name} in one sentence.",
         f"{t.name} {t.past} the {t.obj} and plans to {t.base2} the {t.obj2} next."),
    ]  # fmt: skip
    n_turns = [1, 2, 1, 3][i % 4]
    messages = [{"role": "system", "content": _SYSTEM_PROMPTS[i % 3]}] if i % 4 in (1, 3) else []
    for user, assistant in turns[:n_turns]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"dataset": source, "id": f"{source}_{g.next_id()}", "messages": messages}


def _boolq(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 2
    passage = f"{t.sentence} Afterwards {t.other} {t.past2} the {t.obj2} in {t.town}."
    asked = t.obj if label == 1 else t.obj2
    question = f"did {t.name.lower()} {t.base} the {asked} {t.place}"
    return {"question": question, "passage": passage, "idx": i, "label": label if labelled else -1}


_HELLASWAG_SPLIT = {"train": "train", "validation": "val", "test": "test"}


def _hellaswag(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 4
    ctx_a = f"{t.name} {t.past} the {t.obj} {t.place}."
    ctx_b = f"then {t.name.lower()} picks up the {t.obj2}"
    endings = [
        f"and carries it carefully to {t.other}.",
        f"and throws it into the {t.noun} at once.",
        f"and starts to {t.base2} it with both hands.",
        f"and puts it back without a word to {t.other}.",
    ]
    endings[0], endings[label] = endings[label], endings[0]  # the plausible ending sits at ``label``
    is_wikihow = i % 2 == 1
    source_id = f"wikihow~{10000 + g.next_id()}" if is_wikihow else f"activitynet~v_{g.hexid(11)}"
    return {
        "ind": 4 + 13 * g.next_id(),
        "activity_label": _ACTIVITIES[i % len(_ACTIVITIES)],
        "ctx_a": ctx_a,
        "ctx_b": ctx_b,
        "ctx": f"{ctx_a} {ctx_b}",
        "endings": endings,
        "source_id": source_id,
        "split": _HELLASWAG_SPLIT[split],
        "split_type": "zeroshot" if i % 3 == 2 else "indomain",
        "label": str(label) if labelled else "",
    }


def _arc(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    if i % 9 == 8:
        labels = list("ABCDE")
    elif i % 7 == 3:
        labels = list("ABC")
    elif i % 5 == 4:
        labels = list("1234")
    else:
        labels = list("ABCD")
    answer = i % len(labels)
    texts = g.rng.sample(_PROPERTIES[1:], len(labels) - 1)
    texts.insert(answer, _PROPERTIES[0])  # "its length" answers the ruler question
    return {
        "id": f"{_ARC_PREFIXES[i % len(_ARC_PREFIXES)]}{7000000 + 131 * g.next_id()}",
        "question": f"{t.name} {t.past} the {t.obj} {t.place}. Which property of the {t.noun} is easiest to measure "
        "with a ruler?",
        "choices": {"text": texts, "label": labels},
        "answerKey": labels[answer],
    }


def _obqa(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    labels = list("ABCD")
    return {
        "id": f"{7 + i % 3}-{100 + g.next_id()}",
        "question_stem": f"After {t.name} {t.past} the {t.obj} {t.place}, the {t.noun}",
        "choices": {"text": g.rng.sample(_OUTCOMES, 4), "label": labels},
        "answerKey": labels[i % 4],
    }


_HH_ASKS = [
    ("How do I {b} the {a} {n}?", " Start slowly and ask {o} to help you {b} it.",
     " I don't know, maybe just throw it away."),
    ("Can you tell me why people {b} the {n} {p}?", " Many do it {r}; in {t} it is a tradition.",
     " Why do you want to know that?"),
    ("What should I bring if I {b} a {n} with {o}?", " Bring gloves, water and a map of {t}.",
     " Nothing, you will be fine."),
]  # fmt: skip
_HH_FOLLOW_UPS = [
    ("And how long does that take?", " About {d} days, if {o} helps."),
    ("Is it expensive?", " Not really; {h} people in {t} did it last year."),
]


def _hh_rlhf(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    words = {"a": t.obj.split()[0], "n": t.noun, "b": t.base, "o": t.other, "p": t.place, "r": t.reason, "t": t.town,
             "d": t.days, "h": t.helpers}  # fmt: skip
    ask, good, bad = (x.format(**words) for x in _HH_ASKS[i % len(_HH_ASKS)])
    transcript = f"\n\nHuman: {ask}"
    if i % 2 == 1:  # two turns: the prompt holds an earlier assistant reply, the responses answer the follow-up
        follow_up, reply = _HH_FOLLOW_UPS[i % 4 // 2]
        transcript += f"\n\nAssistant:{good}\n\nHuman: {follow_up.format(**words)}"
        good, bad = reply.format(**words), f" I'm not sure, {t.name}."
    prompt = transcript + "\n\nAssistant:"
    return {"chosen": prompt + good, "rejected": prompt + bad}


_UF_PROMPTS = [
    "Write a short note to {o} about the {obj} {p}.",
    "Explain in two sentences why {n} {past} the {obj}.",
    "List three ways to {b} a {obj} in {t}.",
]


def _ultrafeedback(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    prompt = _UF_PROMPTS[i % len(_UF_PROMPTS)].format(o=t.other, obj=t.obj, p=t.place, n=t.name, past=t.past,
                                                      b=t.base, t=t.town)  # fmt: skip
    good = f"{t.name} {t.past} the {t.obj} {t.reason}. It took {t.days} days and {t.helpers} helpers from {t.town}."
    bad = f"I am not sure what the {t.noun} is."
    chosen = [{"content": prompt, "role": "user"}, {"content": good, "role": "assistant"}]
    rejected = [{"content": prompt, "role": "user"}, {"content": bad, "role": "assistant"}]
    score_chosen = float(6 + i % 5)
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
        "chosen": chosen,
        "rejected": rejected,
        "messages": copy.deepcopy(chosen),
        "score_chosen": score_chosen,
        "score_rejected": score_chosen - 1.0 - i % 3,
    }


def _sg_cb(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 3  # 0 entailment, 1 contradiction, 2 neutral (SuperGLUE's order)
    premise = f"{t.other} told me that {t.name} {t.past} the {t.obj} {t.place}. I believe it, {t.other} said."
    hypothesis = _nli_hypothesis(t, {0: 0, 1: 2, 2: 1}[label])
    return {"premise": premise, "hypothesis": hypothesis, "idx": i, "label": label if labelled else -1}


def _sg_rte(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    row = _rte(g, i, split, labelled)
    return {"premise": row["sentence1"], "hypothesis": row["sentence2"], "idx": i, "label": row["label"]}


def _sg_wic(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 2  # 1: the word has the same meaning in both sentences
    word = t.noun
    s1 = f"{t.name} {t.past} the old {word} {t.place}."
    same, other = f"{t.other} {t.past2} a new {word} {t.place2}.", f"{t.other} drew a {word} of {t.obj2} {t.place2}."
    s2 = same if label else other
    start1, start2 = s1.index(f" {word} ") + 1, s2.index(f" {word} ") + 1
    return {"word": word, "sentence1": s1, "sentence2": s2, "start1": start1, "start2": start2,
            "end1": start1 + len(word), "end2": start2 + len(word), "idx": i,
            "label": label if labelled else -1}  # fmt: skip


def _sg_wsc(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 2  # 1: the pronoun (span2) refers to span1
    text = f"{t.name} thanked {t.other} {t.place} because he had {t.past} the {t.obj}."
    span1_text, span1_index = (t.other, 2) if label else (t.name, 0)
    span2_index = text.split().index("he")
    return {"text": text, "span1_index": span1_index, "span2_index": span2_index, "span1_text": span1_text,
            "span2_text": "he", "idx": i, "label": label if labelled else -1}  # fmt: skip


def _glue_cola(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 2  # 1: acceptable
    sentence = t.sentence if label else f"{t.name} the {t.obj} {t.past} {t.place} the."
    return {"sentence": sentence, "label": label if labelled else -1, "idx": i}


def _glue_sst2(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 2  # 1: positive
    verdict = "a warm and funny delight" if label else "a dull and tiresome mess"
    return {"sentence": f"the film about {t.name} and the {t.obj} {t.place} is {verdict} ", "label": label if labelled
            else -1, "idx": i}  # fmt: skip


def _glue_mrpc(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 2  # 1: equivalent
    s1 = f"{t.name} {t.past} the {t.obj} in {t.town} {t.place}, officials said."
    s2 = (f"Officials said the {t.obj} in {t.town} was {t.past} by {t.name} {t.place}." if label
          else f"{t.other} {t.past2} the {t.obj2} in {t.town} {t.place2}, officials said.")  # fmt: skip
    return {"sentence1": s1, "sentence2": s2, "label": label if labelled else -1, "idx": 2 * i + 1}


_BOSS_REVIEWS = ["Terrible {o}, it broke after {d} days and {n} never answered.",  # negative
                 "Love this {o}! {n} recommended it and it works perfectly {p}.",  # positive
                 "The {o} is okay. It does what {n} said, nothing more, {p}."]  # neutral  # fmt: skip


def _boss(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label = i % 3  # 0 negative, 1 positive, 2 neutral (BOSS's order)
    return {"Text": _BOSS_REVIEWS[label].format(o=t.obj, d=t.days, n=t.name, p=t.place), "Label": label}


_PUBMED_ROLES = [
    ("background", "{n} is a common problem in {t} and few treatments exist ."),
    ("objective", "to assess whether {o} improves outcomes in patients with {n} ."),
    ("methods", "we randomly assigned @ patients in {t} to {o} or placebo for @ days ."),
    ("results", "{o} reduced symptoms of {n} compared with placebo ( p < @ ) ."),
    ("conclusions", "{o} may be an effective treatment of {n} in {t} ."),
]


def _pubmed_rct(g: _Gen, i: int, split: str, labelled: bool) -> dict:
    t = g.topic()
    label, sentence = _PUBMED_ROLES[i % len(_PUBMED_ROLES)]
    text = sentence.format(n=f"{t.noun} syndrome", o=f"{t.obj2} therapy", t=t.town.lower())
    return {"abstract_id": str(24000000 + 7 * g.next_id()), "label": label, "text": text,
            "sentence_id": i % len(_PUBMED_ROLES)}  # fmt: skip


_BUILDERS: dict[str, _RowFn] = {
    "glue_mnli": _mnli,
    "glue_rte": _rte,
    "gpt3nli": _gpt3nli,
    "paws": _paws,
    "qqp": _qqp,
    "stsb": _stsb,
    "xsum": _xsum,
    "xlsum_english": _xlsum,
    "cnn_dailymail": _cnn,
    "pubmed_summarization": _pubmed,
    "c4_en": _c4,
    "social_i_qa": _siqa,
    "sciq": _sciq,
    "tweet_qa": _tweet_qa,
    "tulu_v2": _tulu,
    "boolq": _boolq,
    "hellaswag": _hellaswag,
    "arc_easy": _arc,
    "arc_challenge": _arc,
    "openbookqa": _obqa,
    "hh_rlhf_helpful_base": _hh_rlhf,
    "ultrafeedback_binarized": _ultrafeedback,
    "superglue_cb": _sg_cb,
    "superglue_rte": _sg_rte,
    "superglue_wic": _sg_wic,
    "superglue_wsc_fixed": _sg_wsc,
    "glue_cola": _glue_cola,
    "glue_sst2": _glue_sst2,
    "glue_mrpc": _glue_mrpc,
    "boss_amazon": _boss,
    "boss_dynasent": _boss,
    "boss_semeval": _boss,
    "boss_sst5": _boss,
    "pubmed_rct20k": _pubmed_rct,
}
assert set(_BUILDERS) == set(HUB_DATASETS)


def _split_columns(gen: _Gen, key: str, split: str, rows: int) -> dict[str, list]:
    """``rows`` rows of ``split`` as columns; text columns are redrawn until distinct within the split."""
    spec = HUB_DATASETS[key]
    labelled = split not in spec["unlabeled_splits"]
    seen: dict[str, set[str]] = {c: set() for c in spec["text_columns"]}
    columns: dict[str, list] = {name: [] for name in spec["features"]}
    for i in range(rows):
        for _attempt in range(1000):
            row = _BUILDERS[key](gen, i, split, labelled)
            values = {c: repr(row[c]) for c in seen}
            if all(v not in seen[c] for c, v in values.items()):
                break
        else:  # pragma: no cover - only reachable with thousands of rows per split
            raise RuntimeError(f"{key}/{split}: ran out of distinct synthetic rows at row {i}; use fewer rows")
        for c, v in values.items():
            seen[c].add(v)
        for name in columns:
            columns[name].append(row[name])
    return columns


def write_hub_dataset(
    key: str, folder: str | Path, rows: int = 20, seed: int = 0, splits: list[str] | None = None
) -> Path:
    """Write folder/<split>.parquet for every split of the hub dataset (or the given splits), `rows` rows each; return folder."""  # noqa: E501
    spec = HUB_DATASETS[key]
    wanted = list(spec["splits"]) if splits is None else list(splits)
    unknown = [s for s in wanted if s not in spec["splits"]]
    if unknown:
        raise ValueError(f"{key} ({spec['hub_id']}) has no split(s) {unknown}; hub splits: {spec['splits']}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = _Gen(seed, key)
    features = hub_features(key)
    # Generate every hub split in hub order so a split's content does not depend on which splits were requested.
    for split in spec["splits"]:
        columns = _split_columns(gen, key, split, rows)
        if split in wanted:
            datasets.Dataset.from_dict(columns, features=features).to_parquet(str(folder / f"{split}.parquet"))
    return folder
