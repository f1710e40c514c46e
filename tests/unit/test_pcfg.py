"""The PCFG world (Jain et al., ICLR 2024): grammar, tasks, records, datasets, tokenizer and pre-training."""

from __future__ import annotations

import argparse
import json
import logging
import random
import time

import pandas as pd
import pytest
import torch

from ptft.pcfg import pretrain as pt
from ptft.pcfg.grammar import TERMINALS, expand, make_grammar, sample_text
from ptft.pcfg.tokenizer import build_tokenizer
from ptft.pcfg.world import (
    COLUMNS,
    TASKS,
    World,
    answer_words,
    prompt_text,
    sample_batch,
    sample_record,
    vocabulary,
    write_dataset,
)

TOY = World(window=24, count_window=16, occurrence=2, offset=8)


def tiny_config(**overrides) -> dict:
    cfg = {
        "world": {"window": 12, "count_window": 8, "occurrence": 2, "offset": 4},
        "pretrain": {"tasks": {"count": 1.0}, "prior": {"a": 0.9, "b": 0.1}, "spurious": 0.0},
        "baseline": {"tasks": {"count": 1.0}, "prior": {"b": 1.0}},
        "model": {"layers": 1, "heads": 2, "hidden_size": 16},
        "steps": 6,
        "n_checkpoints": 2,
        "first_step": 3,
        "batch_size": 8,
        "lr": 0.001,
        "weight_decay": 0.1,
        "warmup_ratio": 0.2,
        "min_lr_ratio": 0.1,
    }
    return {**cfg, **overrides}


# --- grammar ------------------------------------------------------------------------------------------------


def test_grammar_is_deterministic_levelled_and_produces_every_terminal():
    g = make_grammar(3)
    assert g == make_grammar(3)
    assert g != make_grammar(4)
    assert len(g.rules) == 16 and sum(len(r) for r in g.rules.values()) == 32
    assert g.start == ("L0_0", "L0_1", "L0_2", "L0_3")
    for name, rhss in g.rules.items():
        level = int(name[1])
        below = TERMINALS if level == 3 else {f"L{level + 1}_{i}" for i in range(4)}
        assert all(2 <= len(rhs) <= 3 and set(rhs) <= set(below) for rhs in rhss)
    for seed in range(20):
        assert make_grammar(seed).reachable_terminals() == set(TERMINALS)

    text = sample_text(g, random.Random(1), 250)
    assert text == sample_text(g, random.Random(1), 250)
    assert len(text) == 250 and set(text) == set(TERMINALS)


def test_tabulated_expansions_have_the_grammars_probabilities():
    g = make_grammar(0)
    # The expected expansion length, by the rules: a uniform rule, the sum of its symbols' expectations.
    expected: dict[str, float] = {}
    for name in reversed(list(g.rules)):
        rhss = g.rules[name]
        expected[name] = sum(sum(expected.get(s, 1.0) for s in rhs) for rhs in rhss) / len(rhss)
    compiled, _ = g._compiled
    tabulated = 0
    for (expansions, _children), name in zip(compiled, g.rules, strict=True):
        if expansions is not None:
            tabulated += 1
            assert sum(map(len, expansions)) / len(expansions) == pytest.approx(expected[name], rel=1e-12)
    assert tabulated == 12  # every level but the start symbols'

    # One expansion of a uniform start symbol: its mean length within a loose interval of the exact one.
    rng = random.Random(0)
    lengths = [len(expand(g, rng, 1)) for _ in range(4000)]
    exact = sum(expected[s] for s in g.start) / len(g.start)
    assert abs(sum(lengths) / len(lengths) - exact) < 0.05 * exact


# --- tasks --------------------------------------------------------------------------------------------------


def test_task_answers_on_hand_written_texts():
    w = World(window=6, count_window=4, occurrence=2, offset=3)
    text = "a b b a c b".split()
    assert TASKS["count"].answer(w, text, "b") == "2"  # b a c b
    assert TASKS["count"].answer(w, text, "a") == "1"
    assert TASKS["count"].answer(w, text, "c") == "1"
    assert TASKS["index"].answer(w, text, "b") == "4"  # b at 1 (the last token), c, a, b at 4
    assert TASKS["index"].answer(w, text, "a") == "6"
    assert TASKS["index"].answer(w, text, "c") is None  # one c only
    assert TASKS["token_at"].answer(w, text, "b") == "a"  # the 3rd token from the end
    assert TASKS["count_pair"].answer(w, text, "b") == "0"  # b b lies before the last 4 tokens
    assert TASKS["count_pair"].answer(World(window=6, count_window=6), text, "b") == "1"

    w3 = World(window=3, count_window=3, occurrence=1, offset=1)
    assert TASKS["count_pair"].answer(w3, "a a a".split(), "a") == "2"  # overlapping pairs count
    # A pair straddling the count window's start is out: the last 3 of "b b a a" hold one "a a", no "b b".
    w4 = World(window=4, count_window=3, occurrence=1, offset=1)
    assert TASKS["count_pair"].answer(w4, "b b a a".split(), "a") == "1"
    assert TASKS["count_pair"].answer(w4, "b b a a".split(), "b") == "0"

    assert [t.operand2(w, "b") for t in TASKS.values()] == ["4", "b", "2", "3"]
    assert prompt_text(w, "count", "b", text) == "<sos> <count> b 4 <sot> a b b a c b <eot> <art>"


def test_scored_windows_match_the_per_text_answers():
    import numpy as np

    w = World(window=10, count_window=6, occurrence=3, offset=2)
    stream = sample_text(make_grammar(2), random.Random(0), 300)
    codes = np.frombuffer("".join(stream).encode(), dtype=np.uint8)
    for task in ("count", "count_pair", "index"):
        for operand in TERMINALS:
            fast = TASKS[task].answers_at(w, codes, operand)
            slow = [TASKS[task].answer(w, stream[j : j + 10], operand) for j in range(len(stream) - 9)]
            assert fast.tolist() == [-1 if a is None else int(a) for a in slow], (task, operand)


def test_records_hold_every_operands_answer():
    g = TOY.build_grammar()
    rng = random.Random(0)
    words = answer_words(TOY)
    for task in TASKS:
        for _ in range(20):
            r = sample_record(TOY, g, rng, task, "b")
            assert list(r) == list(COLUMNS)
            assert words[r["label"]] == r["answer"] and r["label"] == r["answer_b"]
            text = r["prompt"].split()[5:-2]
            assert len(r["prompt"].split()) == TOY.prompt_length and len(text) == 24
            for o in TERMINALS:
                answer = TASKS[task].answer(TOY, text, o)
                assert r[f"answer_{o}"] == (-1 if answer is None else words.index(answer))
            if task == "token_at":
                assert r["answer_a"] == r["answer_b"] == r["answer_c"] == words.index(text[-8])
            assert r["spurious"] is False


def test_spurious_records_correlate_b_with_a_and_are_fast():
    g = TOY.build_grammar()
    rng = random.Random(0)
    for task in ("count", "count_pair", "index"):
        for operand in TERMINALS:
            for _ in range(30):
                r = sample_record(TOY, g, rng, task, operand, spurious=True)
                assert r["answer_a"] >= 0 and r["answer_b"] == r["answer_a"] + 1 and r["label"] >= 0
                assert r["spurious"] is True
    with pytest.raises(ValueError, match="token_at"):
        sample_record(TOY, g, rng, "token_at", "b", spurious=True)
    # Both a and b filling all 8 tokens: impossible; the search gives up, saying why.
    never = World(window=8, count_window=1, occurrence=8, offset=1)
    with pytest.raises(ValueError, match=r"task index: no window of 8 tokens with answer_b == answer_a \+ 1"):
        sample_record(never, g, rng, "index", "a", spurious=True)

    start = time.perf_counter()
    for _ in range(10_000):
        sample_record(TOY, g, rng, "count", "b", spurious=True)
    assert time.perf_counter() - start < 3


def test_batches_follow_the_task_weights_and_the_operand_prior():
    g = TOY.build_grammar()
    records = sample_batch(
        TOY, g, random.Random(0), 2000, {"count": 1.0, "index": 0.0}, {"a": 0.7, "b": 0.3, "c": 0.0}, spurious=0.25
    )
    operands = pd.Series([r["operand"] for r in records]).value_counts(normalize=True)
    assert set(operands.index) == {"a", "b"}
    assert 0.64 < operands["a"] < 0.76
    assert {r["task"] for r in records} == {"count"}
    assert 0.2 < sum(r["spurious"] for r in records) / 2000 < 0.3
    assert all(r["answer_b"] == r["answer_a"] + 1 for r in records if r["spurious"])
    with pytest.raises(ValueError, match="unknown entry 'sort'"):
        sample_batch(TOY, g, random.Random(0), 1, {"sort": 1.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="prior: every weight is 0"):
        sample_batch(TOY, g, random.Random(0), 1, {"count": 1.0}, {"a": 0})


# --- world config, vocabulary, tokenizer ---------------------------------------------------------------------


def test_world_config_defaults_and_errors():
    assert World.from_config({}) == World(0, 4, 4, 2, (2, 3), 250, 40, 6, 40)
    w = World.from_config({"grammar": {"seed": 5, "rules": 3}, "window": 30, "count_window": 10, "offset": 7})
    assert (w.grammar_seed, w.rules, w.window, w.count_window, w.offset, w.occurrence) == (5, 3, 30, 10, 7, 6)
    with pytest.raises(ValueError, match=r"^checkpoints\.pcfg\.world\.count_window: 300 exceeds window 250$"):
        World.from_config({"count_window": 300})
    with pytest.raises(ValueError, match=r"world\.offset: 40 exceeds window 24"):
        World.from_config({"window": 24, "count_window": 16})
    with pytest.raises(ValueError, match=r"world: unknown keys \['windw'\]"):
        World.from_config({"windw": 3})
    with pytest.raises(ValueError, match=r"world\.grammar\.levels: 0 must be at least 1"):
        World.from_config({"grammar": {"levels": 0}})


def test_vocabulary_and_answer_words():
    w = World(window=5, count_window=3, occurrence=2, offset=2)
    assert answer_words(w) == ("0", "1", "2", "3", "4", "5", "a", "b", "c")
    vocab = vocabulary(w)
    assert vocab[:6] == ["<pad>", "<sos>", "<eos>", "<sot>", "<eot>", "<art>"]
    assert len(vocab) == len(set(vocab)) == 6 + 4 + 6 + 3
    assert {"<count>", "<count_pair>", "<index>", "<token_at>"} <= set(vocab)


def test_tokenizer_round_trip_and_save_load(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer(TOY)
    r = sample_record(TOY, TOY.build_grammar(), random.Random(0), "count", "a")
    text = f"{r['prompt']} {r['answer']} <eos>"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.split()) == TOY.sample_length
    assert ids[0] == tok.bos_token_id == vocabulary(TOY).index("<sos>") and ids[-1] == tok.eos_token_id
    assert ids == [vocabulary(TOY).index(word) for word in text.split()]
    assert tok.decode(ids) == text
    assert (tok.pad_token, tok.unk_token, len(tok)) == ("<pad>", None, len(vocabulary(TOY)))

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids and loaded.decode(ids) == text
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<sos>", "<eos>", "<pad>")
    with pytest.raises(Exception, match="UNK"):
        tok("<sos> d")


# --- datasets -----------------------------------------------------------------------------------------------


def test_datasets_are_distinct_and_a_function_of_their_spec(tmp_path):
    spec = {"task": "count", "operand": "b", "spurious": 0.5}
    sizes = {"train": 60, "validation": 20, "test": 20}
    write_dataset(TOY, spec, sizes, 7, tmp_path / "one")
    write_dataset(TOY, spec, sizes, 7, tmp_path / "two")
    splits = {s: pd.read_parquet(tmp_path / "one" / f"{s}.parquet") for s in sizes}
    assert {s: len(df) for s, df in splits.items()} == sizes
    assert all(list(df.columns) == list(COLUMNS) for df in splits.values())
    prompts = pd.concat(splits.values())["prompt"]
    assert prompts.is_unique
    for s in sizes:
        pd.testing.assert_frame_equal(splits[s], pd.read_parquet(tmp_path / "two" / f"{s}.parquet"))
    train = splits["train"]
    assert set(train["task"]) == {"count"} and set(train["operand"]) == {"b"}
    assert 0 < train["spurious"].sum() < 60
    spurious = train[train["spurious"]]
    assert (spurious["answer_b"] == spurious["answer_a"] + 1).all()

    write_dataset(TOY, spec, sizes, 8, tmp_path / "three")
    assert not pd.read_parquet(tmp_path / "three" / "train.parquet")["prompt"].isin(prompts).all()

    tiny = World(window=2, count_window=1, occurrence=1, offset=1)  # at most 9 texts
    with pytest.raises(ValueError, match=r"sizes\.train: only \d of 20 distinct records"):
        write_dataset(tiny, {"task": "count", "operand": "a"}, {"train": 20}, 0, tmp_path / "four")
    with pytest.raises(ValueError, match=r"spec\.spurious: task token_at"):
        write_dataset(TOY, {"task": "token_at", "operand": "a", "spurious": 1.0}, {"train": 1}, 0, tmp_path / "x")


def test_pcfg_data_command(tmp_path):
    from ptft.pcfg.cli import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    world = json.dumps({"window": 24, "count_window": 16, "occurrence": 2, "offset": 8})
    args = parser.parse_args(
        ["pcfg-data", "--world", world, "--spec", '{"task": "index", "operand": "c"}', "--sizes", '{"test": 5}']
        + ["--seed", "0", "--out-dir", str(tmp_path)]
    )
    args.func(args)
    df = pd.read_parquet(tmp_path / "test.parquet")
    assert len(df) == 5 and set(df["task"]) == {"index"} and (df["answer_c"] >= 0).all()


# --- pre-training -------------------------------------------------------------------------------------------


def test_answer_accuracy_reads_the_prediction_at_art():
    tok = build_tokenizer(TOY)
    three = tok.convert_tokens_to_ids("3")

    class AlwaysThree(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, len(tok))
            logits[..., three] = 1.0
            return type("Out", (), {"logits": logits})()

    records = [{"prompt": "<sos> <count> a 16 <sot> a <eot> <art>", "answer": a} for a in ("3", "4", "3", "b")]
    assert pt.answer_accuracy(AlwaysThree(), tok, records) == 0.5


def test_pretraining_writes_resumable_checkpoints(tmp_path, monkeypatch, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_config()
    whole = pt.pretrain(cfg, "pretrain", tmp_path / "a" / "out", tmp_path / "a" / "state", 0)
    assert [c["name"] for c in whole["checkpoints"]] == ["step3", "step6"]
    assert whole["suite"] == "pcfg" and whole["architecture"] == "GPT2LMHeadModel"
    assert whole["tokens_per_step"] == 8 * 21 and whole["checkpoints"][1]["tokens"] == 6 * 8 * 21
    model = AutoModelForCausalLM.from_pretrained(whole["checkpoints"][1]["path"])
    tok = AutoTokenizer.from_pretrained(whole["checkpoints"][1]["path"])
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_positions == 21
    assert sum(p.numel() for p in model.parameters()) == whole["parameters"]
    world = World.from_config(cfg["world"])
    records = sample_batch(world, world.build_grammar(), random.Random(1), 16, {"count": 1}, {"a": 1})
    assert 0 <= pt.answer_accuracy(model, tok, records) <= 1

    # An interrupted run: it dies writing step6, after step5's state was saved (a 6-step run saves its state
    # every step: every tenth of the run, at least one).
    real = pt.io.write_pretrained

    def dies_at_step6(path, *args, **kwargs):
        if path.name == "step6":
            raise KeyboardInterrupt
        real(path, *args, **kwargs)

    monkeypatch.setattr(pt.io, "write_pretrained", dies_at_step6)
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(cfg, "pretrain", tmp_path / "b" / "out", tmp_path / "b" / "state", 0)
    monkeypatch.setattr(pt.io, "write_pretrained", real)
    with caplog.at_level(logging.INFO, logger="ptft.pcfg.pretrain"):
        resumed = pt.pretrain(cfg, "pretrain", tmp_path / "b" / "out", tmp_path / "b" / "state", 0)
    assert "resuming pre-training (pretrain) at step 5" in caplog.text
    assert [c["name"] for c in resumed["checkpoints"]] == ["step3", "step6"]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "out" / "step6").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "out" / "step6").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # A state of another config is no start: the run begins again at step 0 (as a fine-tuning run does).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ptft.pcfg.pretrain"):
        pt.pretrain(tiny_config(lr=0.002), "pretrain", tmp_path / "b" / "out2", tmp_path / "b" / "state", 0)
    assert "saved by another config, run or seed; pre-training starts afresh" in caplog.text
    assert "resuming" not in caplog.text


def test_baseline_run_writes_scratch(tmp_path):
    from transformers import AutoModelForCausalLM

    manifest = pt.pretrain(tiny_config(), "baseline", tmp_path / "out", tmp_path / "state", 0)
    assert [(c["name"], c["step"]) for c in manifest["checkpoints"]] == [("scratch", 6)]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "scratch").config.n_layer == 1
    with pytest.raises(ValueError, match=r"checkpoints\.pcfg\.baseline: the run's block is missing or null"):
        pt.pretrain(tiny_config(baseline=None), "baseline", tmp_path / "out2", tmp_path / "state2", 0)
    with pytest.raises(ValueError, match=r"checkpoints\.pcfg\.pretrain\.prior: unknown entry 'd'"):
        pt.pretrain(tiny_config(pretrain={"tasks": {"count": 1}, "prior": {"d": 1}}), "pretrain", tmp_path, tmp_path, 0)
