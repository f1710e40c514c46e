"""Probe sets of Ren & Sutherland's learning dynamics: every response type, through the reply cache, offline."""

import json

import pandas as pd
import pytest

from ptft.data.tasks import TaskType
from ptft.derive.backend import Backend
from ptft.derive.toy_backend import LEXICON, ToyBackend, probe_rewrite
from ptft.probes.build import (
    RESPONSE_TYPES,
    ProbeBuildFailed,
    build_probe_set,
    probe_set_version,
    public_config,
    sidecar_path,
)
from ptft.toy import world as w

# The preference task type's fields and default format (its prompt is rendered as it is).
TASK = TaskType("preference", "preference", ("prompt",), {"default": "{prompt}"}, target="chosen")
PAIRS = [("cup", "big", "small"), ("box", "hot", "cold"), ("lamp", "bright", "dim"), ("clock", "old", "new")]
TEST_PAIRS = [("fox", "fast", "slow"), ("owl", "loud", "quiet"), ("wolf", "heavy", "light")]


def records(pairs) -> list[dict]:
    return [{"prompt": f"human : where is the {obj} ?\nassistant :", "chosen": f"the {obj} is {good} .",
             "rejected": f"the {obj} is {bad} ."} for obj, good, bad in pairs]  # fmt: skip


TRAIN, TEST = records(PAIRS), records(TEST_PAIRS)
INITIAL = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 0.95, "seed": 3, "batch_size": 3}


def cfg(**kw) -> dict:
    return {"task": "toy_pref", "examples": 3, "rewrites": {"name": "toy"}, "initial": INITIAL, "seed": 1, **kw}


class Counting(Backend):
    """The toy backend, counting what it is sent."""

    name, model = ToyBackend.name, ToyBackend.model

    def __init__(self):
        self.sent = []

    def run(self, requests, on_reply, on_failure) -> None:
        self.sent += list(requests)
        ToyBackend().run(requests, on_reply, on_failure)


class Failing(Backend):
    """Fails the format rewrites of example 1's responses (their texts name the box)."""

    name, model = ToyBackend.name, ToyBackend.model  # its replies are the toy backend's, cached as those

    def run(self, requests, on_reply, on_failure) -> None:
        for r in requests:
            if r.meta["variant"] == "probe:format" and "box" in r.meta["text"]:
                on_failure(r, "HTTP 500 after 6 retries")
            else:
                ToyBackend().run([r], on_reply, on_failure)


def table(df: pd.DataFrame) -> dict:
    return {(int(e), t): r for e, t, r in zip(df["example"], df["response_type"], df["response"], strict=True)}


def adjective(text: str) -> str:
    return next(x for x in text.split() if x in w.ALL_ADJECTIVES)


def test_the_toy_backend_builds_every_type_for_every_example(tiny_model_dir, tmp_path):
    df = build_probe_set(TRAIN, TEST, TASK, cfg(), ToyBackend(), tmp_path / "cache.sqlite", tiny_model_dir)
    assert list(df.columns) == ["example", "prompt", "response_type", "response"]
    got = table(df)
    assert set(got) == {(i, t) for i in range(3) for t in RESPONSE_TYPES} and len(df) == len(got)
    assert set(df.loc[df["example"] == 0, "prompt"]) == {TRAIN[0]["prompt"]}
    for i in range(3):
        chosen, rejected = got[i, "chosen"], got[i, "rejected"]
        assert (chosen, rejected) == (TRAIN[i]["chosen"], TRAIN[i]["rejected"])
        for kind, original in (("chosen", chosen), ("rejected", rejected)):
            semantic, fmt = got[i, f"{kind}_semantic"], got[i, f"{kind}_format"]
            # Other words, same meaning: as many words, the adjective on the same pole, the rest kept.
            assert semantic != original and len(semantic.split()) == len(original.split())
            assert w.adjective_pole(adjective(semantic)) == w.adjective_pole(adjective(original))
            assert [x for x in semantic.split() if x not in w.ALL_ADJECTIVES] == \
                   [x for x in original.split() if x not in w.ALL_ADJECTIVES]  # fmt: skip
            # Same frame, another meaning: the adjective on the opposite pole, the object another one.
            scale, pole = w.adjective_pole(adjective(original))
            assert w.adjective_pole(adjective(fmt)) == (scale, 1 - pole)
            assert fmt.split()[0] == "the" and fmt.split()[2:3] == ["is"] and fmt.split()[1] != original.split()[1]
        assert len(got[i, "random_sentence"].split()) == len(chosen.split())
        assert set(got[i, "random_sentence"].split()) <= set(LEXICON)
        assert got[i, "irrelevant_train"] == TRAIN[(i + 1) % 3]["chosen"] != chosen
        assert got[i, "irrelevant_test"] == TEST[i % len(TEST)]["chosen"]
        assert sorted(got[i, "shuffled_chosen"].split()) == sorted(chosen.split())
        assert sorted(got[i, "shuffled_test"].split()) == sorted(got[i, "irrelevant_test"].split())
        assert isinstance(got[i, "initial"], str)


def test_a_second_build_with_the_same_cache_sends_nothing(tmp_path):
    types = ["chosen", "rejected", "chosen_semantic", "rejected_format", "random_sentence", "shuffled_chosen"]
    first, second = Counting(), Counting()
    one = build_probe_set(TRAIN, TEST, TASK, cfg(types=types), first, tmp_path / "cache.sqlite")
    assert len(first.sent) == 3 * 3
    assert {r.meta["variant"] for r in first.sent} == {"probe:semantic", "probe:format", "probe:random"}
    two = build_probe_set(TRAIN, TEST, TASK, cfg(types=types), second, tmp_path / "cache.sqlite")
    assert second.sent == []
    pd.testing.assert_frame_equal(one, two)
    # Another seed asks again for what depends on it (here every request: the seed is a generation parameter).
    third = Counting()
    build_probe_set(TRAIN, TEST, TASK, cfg(types=types, seed=2), third, tmp_path / "cache.sqlite")
    assert len(third.sent) == 9


def test_initial_responses_are_sampled_once_the_same_for_the_same_seed(tiny_model_dir, tmp_path):
    types = ["chosen", "initial"]
    one = build_probe_set(TRAIN, TEST, TASK, cfg(types=types), None, None, tiny_model_dir)
    two = build_probe_set(TRAIN, TEST, TASK, cfg(types=types), None, None, tiny_model_dir)
    initial = one[one["response_type"] == "initial"]
    assert len(initial) == 3 and list(initial["example"]) == [0, 1, 2]
    pd.testing.assert_frame_equal(one, two)
    assert all(initial["response"].str.strip() != "")
    other = build_probe_set(TRAIN, TEST, TASK, cfg(types=types, initial={**INITIAL, "seed": 4}), None, None,
                            tiny_model_dir)  # fmt: skip
    assert other["response"].tolist() != one["response"].tolist()  # sampled, not greedy
    # The model is the caller's: given by the config where the call names none.
    three = build_probe_set(TRAIN, TEST, TASK, cfg(types=types, initial={**INITIAL, "model": str(tiny_model_dir)}))
    pd.testing.assert_frame_equal(one, three)


def test_a_failed_rewrite_fails_the_build_naming_the_example_and_type(tmp_path):
    with pytest.raises(ProbeBuildFailed, match="example 1 chosen_format: HTTP 500") as err:
        build_probe_set(TRAIN, TEST, TASK, cfg(types=["chosen", "chosen_format", "rejected_format"]), Failing(),
                        tmp_path / "cache.sqlite", name="hh")  # fmt: skip
    assert "probe_sets.hh: 2 rewrite request(s) failed" in str(err.value)
    assert "example 1 rejected_format" in str(err.value) and "example 0" not in str(err.value)
    # The replies that came are cached: a re-run sends only the failed ones.
    again = Counting()
    build_probe_set(TRAIN, TEST, TASK, cfg(types=["chosen", "chosen_format", "rejected_format"]), again,
                    tmp_path / "cache.sqlite", name="hh")  # fmt: skip
    assert sorted(r.meta["text"] for r in again.sent) == ["the box is cold .", "the box is hot ."]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"probe_sets\.hh\.types: unknown response type 'gold'; allowed: chosen, "):
        build_probe_set(TRAIN, TEST, TASK, cfg(types=["chosen", "gold"]), name="hh")
    with pytest.raises(ValueError, match=r"probe_sets\.hh\.types: 'argmax' is no text"):
        build_probe_set(TRAIN, TEST, TASK, cfg(types=["argmax"]), name="hh")
    with pytest.raises(ValueError, match=r"probe_sets\.hh\.examples: 9 probe prompts asked, the train split has 4"):
        build_probe_set(TRAIN, TEST, TASK, cfg(examples=9), name="hh")
    with pytest.raises(ValueError, match=r"probe_sets\.hh\.sample: unknown key"):
        build_probe_set(TRAIN, TEST, TASK, cfg(sample=3), name="hh")
    with pytest.raises(ValueError, match=r"probe_sets\.hh\.source: 'eval' is neither"):
        build_probe_set(TRAIN, TEST, TASK, cfg(source="eval"), name="hh")
    with pytest.raises(ValueError, match=r"probe_sets\.hh\.initial\.temp: unknown key"):
        build_probe_set(TRAIN, TEST, TASK, cfg(initial={"temp": 1}), name="hh")
    with pytest.raises(ValueError, match=r"probe_sets\.hh\.rewrites: the types \['chosen_semantic'\] need"):
        build_probe_set(TRAIN, TEST, TASK, cfg(types=["chosen_semantic"], rewrites=None), name="hh")


def test_test_prompts_as_probes_take_irrelevant_responses_from_the_other_test_records(tmp_path):
    types = ["chosen", "irrelevant_train", "irrelevant_test"]
    got = table(build_probe_set(TRAIN, TEST, TASK, cfg(types=types, source="test", examples=2)))
    assert got[0, "chosen"] == TEST[0]["chosen"] and got[0, "irrelevant_train"] == TEST[1]["chosen"]
    assert got[0, "irrelevant_test"] == got[1, "irrelevant_test"] == TEST[2]["chosen"]


def test_toy_probe_rewrites_are_seeded_and_keep_the_words_count():
    text = "anna sees the big cup in the kitchen . she likes it ."
    assert probe_rewrite("semantic", text, 0) == probe_rewrite("semantic", text, 0)
    semantic = probe_rewrite("semantic", text, 0).split()
    assert (
        semantic[1] in ("spots", "notices") and semantic[3] in ("large", "huge") and semantic[10] in ("loves", "enjoys")
    )
    fmt = probe_rewrite("format", text, 0).split()
    assert fmt[0] in w.NAMES and fmt[0] != "anna" and w.verb_group(fmt[1]) != w.verb_group("sees")
    assert fmt[3] in ("small", "tiny", "little") and fmt[4] in w.OBJECTS["home"] and fmt[4] != "cup"
    assert fmt[7] in w.PLACES["home"] and fmt[7] != "kitchen" and fmt[2] == "the" and fmt[8] == "."
    assert len(probe_rewrite("random", text, 5).split()) == len(text.split())
    assert probe_rewrite("random", text, 5) != probe_rewrite("random", text, 6)


def test_the_command_writes_the_set_and_its_record(tiny_model_dir, tmp_path):
    from ptft.cli import main

    rows = [{"document": f"anna went to the {place} . there anna sees a big {obj} .", "summary": f"anna sees a {obj} ."}
            for obj, place in (("cup", "hall"), ("box", "shed"), ("hat", "attic"))]  # fmt: skip
    pd.DataFrame(rows[:2]).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame(rows[2:]).to_parquet(tmp_path / "test.parquet")
    config = {"task": "toy_summary", "examples": 2, "seed": 0,
              "types": ["chosen", "chosen_semantic", "irrelevant_test", "initial"],
              "rewrites": {"name": "toy", "api_key": "sk-secret"}, "initial": {"max_new_tokens": 4}}  # fmt: skip
    out = tmp_path / "probes" / "toy.parquet"
    args = ["build-probes", "--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"),
            "--task", "toy_summary", "--config", json.dumps(config), "--cache", str(tmp_path / "cache.sqlite"),
            "--initial-model", str(tiny_model_dir), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    df = pd.read_parquet(out)
    assert len(df) == 8 and df.loc[df["response_type"] == "chosen", "response"].tolist() == [r["summary"] for r in
                                                                                             rows[:2]]  # fmt: skip
    assert df["prompt"].iloc[0].startswith("### Input: anna went to the hall")
    record = json.loads(sidecar_path(out).read_text())
    assert sidecar_path(out) == tmp_path / "probes" / "toy.json"
    assert record["counts"] == {"chosen": 2, "initial": 2, "chosen_semantic": 2, "irrelevant_test": 2}
    assert record["backend"] == {"name": "toy", "model": "toy-world"} and record["model"] == str(tiny_model_dir)
    assert "api_key" not in record["config"]["rewrites"] and "sk-secret" not in sidecar_path(out).read_text()
    assert len(record["version"]) == 12 and record["version"] == probe_set_version(record["config"], record["inputs"])
    assert set(record["inputs"]) == {"train", "test", "initial_model"}
    assert record["config"]["initial"]["temperature"] == 1.0  # the defaults filled in
    # The version follows the config, the templates and the inputs.
    assert probe_set_version({**config, "seed": 1}, record["inputs"]) != record["version"]
    assert probe_set_version(config, {**record["inputs"], "test": "0" * 64}) != record["version"]
    assert public_config({"a": {"api_key_env": "KEY", "token": "t"}}) == {"a": {"api_key_env": "KEY"}}
