"""The synthetic hub-schema fixtures: splits, features round-trip, label coverage, text hygiene, determinism."""

import datasets
import pyarrow.parquet as pq
import pytest

from helpers.hub_fixtures import HUB_DATASETS, hub_features, write_hub_dataset

ROWS = 20
KEYS = sorted(HUB_DATASETS)
ID_COLUMNS = ("id", "idx", "guid", "qid", "ind")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_fixtures")
    return {key: write_hub_dataset(key, root / key, rows=ROWS, seed=0) for key in KEYS}


@pytest.fixture(scope="module")
def loaded(written, tmp_path_factory):
    datasets.disable_progress_bars()
    cache = tmp_path_factory.mktemp("hf_cache")
    out = {}
    for key, folder in written.items():
        files = {split: str(folder / f"{split}.parquet") for split in HUB_DATASETS[key]["splits"]}
        out[key] = datasets.load_dataset("parquet", data_files=files, cache_dir=str(cache))
    return out


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("key", KEYS)
def test_every_key_writes_exactly_its_hub_splits(key, written):
    assert sorted(p.name for p in written[key].iterdir()) == sorted(f"{s}.parquet" for s in HUB_DATASETS[key]["splits"])


@pytest.mark.parametrize("key", KEYS)
def test_load_dataset_reads_back_the_hub_features(key, loaded):
    ds = loaded[key]
    assert list(ds) == HUB_DATASETS[key]["splits"]
    for split in ds:
        assert ds[split].features == hub_features(key)
        assert ds[split].column_names == list(hub_features(key))
        assert ds[split].num_rows == ROWS


@pytest.mark.parametrize("key", KEYS)
def test_labels_cycle_through_all_classes(key, loaded):
    spec = HUB_DATASETS[key]
    col = spec["label_column"]
    if col is None:
        return
    feature = spec["features"][col]
    for split in spec["splits"]:
        values = loaded[key][split][col]
        if split in spec["unlabeled_splits"]:
            assert all(v == spec["unlabeled_splits"][split] for v in values), (split, values)
        elif isinstance(feature, datasets.ClassLabel):
            assert set(values) == set(range(feature.num_classes)), split
        elif spec["label_values"] is not None:
            assert set(spec["label_values"]) <= set(values), split
        elif key == "stsb":
            assert min(values) == 0.0 and max(values) == 5.0 and len(set(values)) > 5
        else:  # tweet_qa answers
            assert all(values), split


@pytest.mark.parametrize("key", KEYS)
def test_texts_non_empty_distinct_and_ids_unique(key, loaded):
    spec = HUB_DATASETS[key]
    seen_ids: dict[str, set] = {}
    for split in spec["splits"]:
        ds = loaded[key][split]
        for row in ds:
            for col, value in row.items():
                if col == spec["label_column"] and split in spec["unlabeled_splits"]:
                    continue  # the hub's placeholder ("" for the HellaSwag test label)
                assert all(s.strip() for s in _strings(value)), (split, col, value)
        for col in spec["text_columns"]:
            assert len({repr(v) for v in ds[col]}) == ROWS, (split, col)
        for col in ID_COLUMNS:
            if col in ds.column_names:
                values = ds[col]
                assert len(set(values)) == ROWS, (split, col)
                if col != "idx":  # GLUE-style idx restarts at 0 in every split, like on the hub
                    assert not seen_ids.setdefault(col, set()) & set(values), (split, col)
                    seen_ids[col] |= set(values)


def test_deterministic_for_a_seed_and_seed_sensitive(written, tmp_path):
    for key in KEYS:
        last = HUB_DATASETS[key]["splits"][-1]  # generated after all other splits, so it depends on all of them
        ref = pq.read_table(written[key] / f"{last}.parquet")
        again = write_hub_dataset(key, tmp_path / "again" / key, rows=ROWS, seed=0, splits=[last])
        other = write_hub_dataset(key, tmp_path / "other" / key, rows=ROWS, seed=1, splits=[last])
        assert ref.equals(pq.read_table(again / f"{last}.parquet"), check_metadata=True), key
        assert not ref.equals(pq.read_table(other / f"{last}.parquet")), key


def test_splits_argument_is_independent_of_the_other_splits(tmp_path):
    full = write_hub_dataset("glue_mnli", tmp_path / "full", rows=4)
    part = write_hub_dataset("glue_mnli", tmp_path / "part", rows=4, splits=["validation_mismatched"])
    assert [p.name for p in part.iterdir()] == ["validation_mismatched.parquet"]
    name = "validation_mismatched.parquet"
    assert pq.read_table(full / name).equals(pq.read_table(part / name))
    with pytest.raises(ValueError, match="validation"):
        write_hub_dataset("glue_rte", tmp_path / "bad", splits=["validation_matched"])


def test_hub_features_is_a_copy():
    feats = hub_features("glue_mnli")
    feats["extra"] = datasets.Value("string")
    assert "extra" not in hub_features("glue_mnli")
    assert hub_features("glue_mnli")["label"].names == ["entailment", "neutral", "contradiction"]


@pytest.mark.parametrize("key", ["arc_easy", "arc_challenge"])
def test_arc_choices_mix_letter_numeric_and_odd_counts(key, loaded):
    rows = list(loaded[key]["train"])
    labels = [tuple(r["choices"]["label"]) for r in rows]
    assert {("A", "B", "C", "D"), ("1", "2", "3", "4"), ("A", "B", "C"), ("A", "B", "C", "D", "E")} <= set(labels)
    for r in rows:
        assert len(r["choices"]["text"]) == len(r["choices"]["label"])
        assert r["answerKey"] in r["choices"]["label"]


def test_tulu_conversations_alternate_with_optional_system_prompt(loaded):
    convs = loaded["tulu_v2"]["train"]["messages"]
    assert any(c[0]["role"] == "system" for c in convs) and any(c[0]["role"] == "user" for c in convs)
    assert any(sum(m["role"] == "user" for m in c) >= 2 for c in convs)  # multi-turn
    for conv in convs:
        roles = [m["role"] for m in conv if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["role"] != "system" for m in conv[1:])


def test_generation_targets_are_grounded_in_their_inputs(loaded):
    sciq = loaded["sciq"]["train"]
    assert all(r["correct_answer"] in r["support"] for r in sciq)
    tweets = loaded["tweet_qa"]["validation"]
    assert all(a in r["Tweet"] for r in tweets for a in r["Answer"])
    for key, doc, summ in [("xsum", "document", "summary"), ("cnn_dailymail", "article", "highlights")]:
        for r in loaded[key]["test"]:
            assert r[summ].split()[0] in r[doc]  # the summary starts with the document's protagonist
