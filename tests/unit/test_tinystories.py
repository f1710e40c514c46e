"""TinyStories-Instruct (the mechanistic study's realistic setting): entries regrouped from the hub's
one-line-per-row text files, the feature edits, a declared dataset's checks, and the ``nll`` metric."""

import logging

import datasets
import pytest
import torch

from ptft.data import declared
from ptft.data.convert import DataError
from ptft.data.prepare import eval_and_fewshot, load_raw_split, subsample_train
from ptft.data.prompts import completion, render_prompt
from ptft.data.registry import get_dataset
from ptft.data.tinystories import BadEntry, entries

TWIST = ["Features: Dialogue, Twist", "Words: cat, hat, run", "Summary: A cat finds a hat.",
         "Story: Once upon a time, a cat found a hat.", "", "But the hat was a bird!"]  # fmt: skip
PLAIN = ["Summary: Ben plays.", "Features: Dialogue", "Story: ", "Ben played in the park.", "He was happy."]
ONLY_TWIST = ["Features: Twist", "Random sentence: The sun is hot.", "Story: Sue ran. Then she flew."]
END = "<|endoftext|>"


def _lines(*stories):
    return [line for story in stories for line in (*story, END)]


def _write_hub_folder(folder, train, valid):
    """The hub repo's layout: one text file per split (``datasets`` reads each line as a row of ``text``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "TinyStories-Instruct-train.txt").write_text("\n".join(train) + "\n")
    (folder / "TinyStories-Instruct-valid.txt").write_text("\n".join(valid) + "\n")
    return folder


# --- entries and edits ------------------------------------------------------------------------------


def test_entries_are_regrouped_with_their_header_story_features_and_first_row():
    out = entries(_lines(TWIST, PLAIN, ONLY_TWIST))
    assert [e["line"] for e in out] == [0, 7, 13]
    assert out[0] == {"instruction": "Features: Dialogue, Twist\nWords: cat, hat, run\nSummary: A cat finds a hat.",
                      "story": "Once upon a time, a cat found a hat.\n\nBut the hat was a bird!",
                      "features": "Dialogue, Twist", "line": 0}  # fmt: skip
    # Header lines keep their order; a story may start on the line after "Story:".
    assert out[1]["instruction"] == "Summary: Ben plays.\nFeatures: Dialogue"
    assert out[1]["story"] == "Ben played in the park.\nHe was happy."
    # The split's last entry without its end marker, and empty entries between markers.
    assert len(entries([*_lines(PLAIN), END, END, *TWIST])) == 2


@pytest.mark.parametrize(("edit", "expected"), [
    ("all", ["Dialogue, Twist", "Dialogue", "Twist"]),
    ("only", ["Dialogue, Twist", "Twist"]),
    ("filter", ["Dialogue"]),
    ("relabel", ["Dialogue", "Dialogue", ""]),
])  # fmt: skip
def test_each_edit_of_the_feature(edit, expected):
    out = entries(_lines(TWIST, PLAIN, ONLY_TWIST), "Twist", edit)
    assert [e["features"] for e in out] == expected
    if edit == "relabel":
        # The stories stay; the instruction no longer asks for the feature (a header of it alone loses the line).
        assert [e["story"] for e in out] == [e["story"] for e in entries(_lines(TWIST, PLAIN, ONLY_TWIST))]
        assert out[0]["instruction"].startswith("Features: Dialogue\nWords:")
        assert out[2]["instruction"] == "Random sentence: The sun is hot."
        assert all("Twist" not in e["instruction"] for e in out)


def test_a_bad_entry_is_named_by_its_first_row_or_skipped(caplog):
    lines = _lines(PLAIN, ["Features: Twist", "Summary: no story here"], TWIST)
    with pytest.raises(BadEntry, match=r"split 'train': the entry starting at row 6 has no 'Story:' line"):
        entries(lines, where="split 'train'")
    with caplog.at_level(logging.WARNING):
        kept = entries(lines, skip_invalid=True)
    assert [e["line"] for e in kept] == [0, 9] and "skipped 1 invalid entries" in caplog.text
    with pytest.raises(BadEntry, match="row 0 has an empty story"):
        entries(["Features: Twist", "Story:", END])
    with pytest.raises(ValueError, match="edit 'drop' is not one of all, only, filter, relabel"):
        entries(lines, edit="drop")


# --- a declared dataset, loaded through the hub loading code ----------------------------------------


@pytest.fixture
def hub_folder(tmp_path):
    train = _lines(*[TWIST, PLAIN, ONLY_TWIST] * 4)
    valid = _lines(PLAIN, TWIST, PLAIN, ONLY_TWIST, PLAIN, TWIST)
    return _write_hub_folder(tmp_path / "TinyStoriesInstruct", train, valid)


def _declare(declared_registry, hub_folder, **entry):
    # hub_id: the folder in the hub repo's layout, read by datasets.load_dataset as the hub repo would be.
    declared.declare({"ts": {"source": "tinystories", "hub_id": str(hub_folder), **entry}})
    return get_dataset("ts")


def test_the_hub_layout_loads_into_edited_entries(declared_registry, hub_folder):
    spec = _declare(declared_registry, hub_folder, feature="Twist", edit="filter")
    assert (spec.train_split, spec.eval_split, spec.task.kind, spec.task.metric) == (
        "train", "validation", "generation", "nll")  # fmt: skip
    raw = load_raw_split(spec, "train")
    assert raw.num_rows == 4 and set(raw.column_names) >= {"instruction", "story", "features", "line"}
    train = subsample_train(spec, None, 3, seed=0)
    assert len(train) == 3 and not train["features"].str.contains("Twist").any()
    record = train.iloc[0].to_dict()
    assert render_prompt(spec.task, record, "default") == "Summary: Ben plays.\nFeatures: Dialogue\nStory: "
    assert completion(spec.task, record) == "Ben played in the park.\nHe was happy."
    scored, pool = eval_and_fewshot(spec, None, None, pool_size=1, seed=0)
    assert len(scored) + len(pool) == 3  # the validation file's three Twist-free entries


def test_only_keeps_the_feature_and_an_edit_that_leaves_nothing_is_an_error(declared_registry, hub_folder):
    spec = _declare(declared_registry, hub_folder, edit="only")
    assert set(load_raw_split(spec, "validation")["features"]) == {"Dialogue, Twist", "Twist"}
    spec = _declare(declared_registry, hub_folder, feature="Foreshadowing", edit="only")
    with pytest.raises(DataError, match="dataset 'ts' split 'train': no entry left after edit 'only' of feature "
                                        "'Foreshadowing'"):  # fmt: skip
        load_raw_split(spec, "train")


def test_a_split_without_text_lines_is_named(declared_registry, tmp_path):
    folder = tmp_path / "wrong"
    folder.mkdir()
    datasets.Dataset.from_dict({"story": ["a"]}).to_parquet(str(folder / "train.parquet"))
    spec = _declare(declared_registry, folder)
    with pytest.raises(ValueError, match="dataset 'ts' split 'train': no 'text' column"):
        load_raw_split(spec, "train")


@pytest.mark.parametrize(("entry", "error"), [
    ({"edit": "drop"}, r"datasets\.ts\.edit: 'drop' is not one of all, only, filter, relabel"),
    ({"feature": "Twist, Dialogue"}, r"datasets\.ts\.feature: expected one feature name"),
    ({"metric": "acc"}, r"datasets\.ts\.metric: 'acc' is not one of nll, rougeL"),
    ({"labels": ["a", "b"]}, r"datasets\.ts\.labels: unknown key of a tinystories dataset"),
])  # fmt: skip
def test_a_bad_declaration_names_its_key(declared_registry, entry, error):
    with pytest.raises(ValueError, match=error):
        declared.declare({"ts": {"source": "tinystories", **entry}})


# --- the nll metric ---------------------------------------------------------------------------------


def test_nll_is_the_mean_token_loss_of_the_gold_given_the_prompt(tiny_model_dir):
    """Against transformers' own loss on the same tokens: prompt masked, mean over the gold's tokens."""
    from ptft.checkpoints.load import load_pretrained
    from ptft.evaluate.multiple_choice import encode_requests
    from ptft.evaluate.scorers import completion_nll

    model, tok = load_pretrained(tiny_model_dir, dtype=torch.float32, device="cpu")
    prompts = ["Summary: a cat.\nStory: ", "Features: Twist\nStory: ", "x"]
    golds = ["Once upon a time a cat sat.", "Sue ran.\nThen she flew!", "a much longer story " * 5]
    nll, cut = completion_nll(model, tok, prompts, golds, batch_size=2, add_bos="auto")
    assert cut == [0, 0, 0]
    for (ctx, cont), value in zip(encode_requests(tok, list(zip(prompts, golds, strict=True))), nll, strict=True):
        ids = torch.tensor([ctx + cont])
        labels = torch.tensor([[-100] * len(ctx) + cont])
        with torch.no_grad():
            expected = model(input_ids=ids, labels=labels).loss.item()
        assert value == pytest.approx(expected, rel=1e-4)


def test_a_task_scored_by_nll_alone_generates_nothing(tiny_model_dir, monkeypatch, declared_registry, tmp_path):
    from ptft.checkpoints.load import load_pretrained
    from ptft.evaluate import generate
    from ptft.evaluate.metrics import higher_is_better
    from ptft.evaluate.scorers import get_scorer

    def no_generation(*args, **kwargs):
        raise AssertionError("nll scores the gold; nothing is generated")

    monkeypatch.setattr(generate, "generate_greedy", no_generation)
    declared.declare({"ts": {"source": "tinystories", "hub_id": str(tmp_path)}})
    task = get_dataset("ts").task
    model, tok = load_pretrained(tiny_model_dir, dtype=torch.float32, device="cpu")
    cfg = {"batch_size": 4, "add_bos": "auto"}
    (result,) = get_scorer("generation").score(model, tok, task, [{}, {}], ["a: ", "b: "], ["x y", "z"], cfg)
    assert result["metric"] == "nll" and result["prediction"] == ["", ""] and all(s > 0 for s in result["score"])
    assert not higher_is_better("nll")
