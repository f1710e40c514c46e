"""Tests of ptft.derive: toy rewrites, output checks, the reply cache, the derivation loop,
corpus sampling, the hf backend and the Dissecting decomposition."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from ptft.derive.backend import Backend, Reply
from ptft.derive.cache import ReplyCache, request_key
from ptft.derive.checks import clean, rejection
from ptft.derive.corpus import load_documents, sample_documents
from ptft.derive.dissect import components, dissect_tables, per_document_change, text_logliks
from ptft.derive.run import DerivationFailed, derive_variants
from ptft.derive.templates import Variant, load_variant
from ptft.toy import docs
from ptft.toy import world as w

DEFAULT_VARIANTS = [
    {"name": "topic", "factor": "topic", "template": "workflow/templates/derive/topic.yaml"},
    {"name": "style:casual", "factor": "style", "template": "workflow/templates/derive/style_casual.yaml"},
    {"name": "counterfactual", "factor": "facts", "template": "workflow/templates/derive/counterfactual.yaml"},
]


# --- toy rewrites ------------------------------------------------------------------------------


def facts_in(text: str, latent: dict) -> set[str]:
    return {k for k in ("name", "place", "obj", "verb", "adj", "mood", "time") if f" {latent[k]} " in f" {text} "}


def test_toy_variants_change_exactly_their_factor():
    rng = random.Random(0)
    for _ in range(200):
        record = docs.document(rng, "home")
        latent = json.loads(record["latent"])
        assert len(facts_in(record["text"], latent)) == 7
        frame = [t for t in record["text"].split() if t in ("went", "there", "felt", "was")]
        topic = docs.rewrite(latent, "topic")
        # Same frame and the facts that are not nouns; the nouns are the other domain's.
        assert [t for t in topic.split() if t in ("went", "there", "felt", "was")] == frame
        assert facts_in(topic, latent) == {"name", "verb", "adj", "mood", "time"}
        assert any(f" {o} " in f" {topic} " for o in w.OBJECTS["wild"])
        assert any(f" {p} " in f" {topic} " for p in w.PLACES["wild"])
        for style in ("style:casual", "style:rap"):
            restyled = docs.rewrite(latent, style)
            assert len(facts_in(restyled, latent)) == 7 and restyled != record["text"]  # every fact kept
        counter = docs.rewrite(latent, "counterfactual")
        assert facts_in(counter, latent) == set()  # every fact changed ...
        assert [t for t in counter.split() if t in ("went", "there", "felt", "was")] == frame  # ... in the same frame
        words = counter.split()
        new_adj = words[words.index("there") + 4]
        assert w.nli_label(latent["adj"], new_adj) == w.NLI_LABELS.index("contradiction")
        rephrased = docs.rewrite(latent, "rephrase")
        assert facts_in(rephrased, latent) >= {"name", "place", "obj", "mood", "time"}
        assert w.verb_group(words_after(rephrased, latent["name"], 2)) == w.verb_group(latent["verb"])
    with pytest.raises(ValueError, match="no exact rewrite for variant 'poem'"):
        docs.rewrite(latent, "poem")


def words_after(text: str, word: str, nth: int) -> str:
    """The word after the ``nth`` occurrence of ``word``."""
    tokens = text.split()
    positions = [i for i, t in enumerate(tokens) if t == word]
    return tokens[positions[nth - 1] + 1]


# --- checks ------------------------------------------------------------------------------------

SOURCE = "The enzyme binds the receptor in liver cells and lowers glucose output by a third in mice."


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("   \n", "empty"),
        ("I'm sorry, but I can't help with rewriting this.", "refused"),
        ("As an AI language model, I will not do that. " * 3, "refused"),
        ("Too short.", "too_short"),
        ("the enzyme binds the receptor in liver   cells and lowers glucose output by a third in mice.", "copy"),
        ("go team " * 30, "repetitive"),
        ("The striker beats the keeper in home games and lifts the goal count by a third in spring.", None),
    ],
)
def test_rejection_reasons(reply, reason):
    assert rejection(reply, SOURCE) == reason


def test_clean_drops_a_chatty_first_line_only():
    assert clean("Sure! Here is the rewritten text:\nThe striker beats the keeper.") == "The striker beats the keeper."
    assert clean("Here is a fact: mice eat.") == "Here is a fact: mice eat."


# --- templates and cache -----------------------------------------------------------------------


def test_variant_templates_load_and_render():
    v = load_variant(DEFAULT_VARIANTS[0], ROOT)
    assert (v.name, v.factor, v.version) == ("topic", "topic", "1")
    messages = v.messages("DOC TEXT")
    assert messages[0]["role"] == "system" and messages[-1]["content"].endswith("Document:\nDOC TEXT")
    with pytest.raises(FileNotFoundError, match="variant 'x'"):
        load_variant({"name": "x", "template": "nope.yaml"}, ROOT)


def test_template_without_text_slot_is_refused(tmp_path):
    (tmp_path / "t.yaml").write_text("version: 2\nfactor: topic\nuser: no slot here\n")
    with pytest.raises(ValueError, match=r"variant 'bad' needs exactly one \{text\}"):
        load_variant({"name": "bad", "template": "t.yaml"}, tmp_path)


def test_cache_key_covers_every_component_and_replies_persist(tmp_path):
    msgs = [{"role": "user", "content": "x"}]
    base = request_key("openai", "m", "1", {"temperature": 0.7, "seed": 0}, msgs)
    others = [
        request_key("hf", "m", "1", {"temperature": 0.7, "seed": 0}, msgs),
        request_key("openai", "m2", "1", {"temperature": 0.7, "seed": 0}, msgs),
        request_key("openai", "m", "2", {"temperature": 0.7, "seed": 0}, msgs),
        request_key("openai", "m", "1", {"temperature": 0.7, "seed": 1}, msgs),
        request_key("openai", "m", "1", {"temperature": 0.7, "seed": 0}, [{"role": "user", "content": "y"}]),
    ]
    assert len({base, *others}) == 6
    assert base == request_key("openai", "m", "1", {"seed": 0, "temperature": 0.7}, msgs)  # order-free
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        cache.put(base, "openai", "m", "1", {"messages": msgs}, Reply("hello", 3, 1))
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        assert cache.get_many([base, others[0]]) == {base: Reply("hello", 3, 1)}
        assert len(cache) == 1


# --- the derivation loop -----------------------------------------------------------------------


class ScriptedBackend(Backend):
    """Replies by a rule of the input text and the attempt seed; counts what it was sent."""

    name, model = "scripted", "rule-1"

    def __init__(self, reply, fail=()):
        self.reply = reply
        self.fail = set(fail)
        self.sent: list[tuple[str, int]] = []

    def run(self, requests, on_reply, on_failure):
        for r in requests:
            text = r.messages[-1]["content"].split("Document:\n", 1)[1]
            self.sent.append((text, r.params["seed"]))
            if text in self.fail:
                on_failure(r, "HTTP 500: down")
            else:
                on_reply(r, Reply(self.reply(text, r.params["seed"]), 10, 5))


def corpus_of(n: int) -> pd.DataFrame:
    texts = [f"document number {i} tells a long story about a blue bird" for i in range(n)]
    return pd.DataFrame({"doc_id": [f"d{i}" for i in range(n)], "text": texts})


def rewrite_rule(text: str, seed: int) -> str:
    n = int(text.split()[2])
    if n == 0:  # always copies: dropped after every attempt
        return text
    if n == 1 and seed % 5 == 0:  # empty at the first attempt (seeds 0 and 5 here): retried
        return ""
    return f"a fresh tale {n} about a red fox, seed {seed}, told at length for the reader"


def test_derive_retries_drops_counts_and_replays_from_cache(tmp_path):
    variants = [load_variant(v, ROOT) for v in DEFAULT_VARIANTS[:2]]
    corpus = corpus_of(4)
    backend = ScriptedBackend(rewrite_rule)
    prices = {"input": 2.0, "output": 10.0}
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        table, stats = derive_variants(corpus, variants, backend, cache, {"temperature": 0.7, "seed": 5}, {}, 3, prices)
    # d0 is dropped (3 attempts, all copies), d1 accepted at its second attempt, d2, d3 at the first.
    assert sorted(set(table["original_id"])) == ["d1", "d2", "d3"] and len(table) == 6
    assert set(table.loc[table["original_id"] == "d1", "attempt"]) == {1}
    assert table.loc[table["original_id"] == "d1", "text"].str.endswith("seed 6, told at length for the reader").all()
    assert list(table.columns[:7]) == ["original_id", "variant", "factor", "text", "backend", "model",
                                       "template_version"]  # fmt: skip
    s = stats.set_index("variant")
    assert s.loc["topic", "requests"] == 4 + 2 + 1  # round 0: 4, round 1: d0 and d1, round 2: d0
    assert s.loc["topic", "sent"] == 7 and s.loc["topic", "cache_hits"] == 0
    assert s.loc["topic", "rejected_copy"] == 3 and s.loc["topic", "rejected_empty"] == 1
    assert s.loc["topic", "dropped"] == 1 and s.loc["topic", "accepted"] == 3
    assert s.loc["topic", "est_cost_usd"] == pytest.approx((7 * 10 * 2.0 + 7 * 5 * 10.0) / 1e6)
    assert len(backend.sent) == 14
    # A re-run sends nothing and decides the same.
    again = ScriptedBackend(rewrite_rule)
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        table2, stats2 = derive_variants(corpus, variants, again, cache, {"temperature": 0.7, "seed": 5}, {}, 3)
    assert again.sent == [] and table2.equals(table)
    assert stats2["cache_hits"].sum() == 14 and stats2["sent"].sum() == 0


def test_failed_requests_stop_the_run_and_only_they_are_resent(tmp_path):
    variants = [load_variant(DEFAULT_VARIANTS[0], ROOT)]
    corpus = corpus_of(5)
    broken = corpus["text"][3]
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(DerivationFailed, match=r"1 derivation request\(s\) failed .*HTTP 500.*\['d3'\]"):
            derive_variants(corpus, variants, ScriptedBackend(rewrite_rule, fail=[broken]), cache, {}, {}, 1)
    healed = ScriptedBackend(rewrite_rule)
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        table, _ = derive_variants(corpus, variants, healed, cache, {}, {}, 1)
    assert healed.sent == [(broken, 0)]
    assert sorted(table["original_id"]) == ["d2", "d3", "d4"]  # d0 copies; d1, empty, has no second attempt


def test_toy_backend_rewrites_toy_documents_through_the_loop(tmp_path):
    from ptft.derive.toy_backend import ToyBackend

    rng = random.Random(3)
    records = [docs.document(rng, "home") for _ in range(6)]
    corpus = pd.DataFrame({"doc_id": [f"t{i}" for i in range(6)], "text": [r["text"] for r in records],
                           "latent": [r["latent"] for r in records]})  # fmt: skip
    variants = [load_variant(v, ROOT) for v in DEFAULT_VARIANTS]
    with ReplyCache(tmp_path / "c.sqlite") as cache:
        table, stats = derive_variants(corpus, variants, ToyBackend(), cache, {}, {}, 1)
    assert len(table) == 18 and stats["dropped"].sum() == 0
    got = table.set_index(["original_id", "variant"])["text"]
    for i, r in enumerate(records):
        for v in ("topic", "style:casual", "counterfactual"):
            assert got[(f"t{i}", v)] == docs.rewrite(json.loads(r["latent"]), v)
    with ReplyCache(tmp_path / "d.sqlite") as cache, pytest.raises(DerivationFailed, match="no latent facts"):
        derive_variants(corpus.drop(columns="latent"), variants, ToyBackend(), cache, {}, {}, 1)


# --- corpus sampling ---------------------------------------------------------------------------


def test_corpus_from_local_files_filters_dedupes_and_samples_by_seed(tmp_path):
    texts = [f"document {i} " + "word " * (i % 7) * 20 for i in range(60)] + ["document 5 " + "word " * 100]
    (tmp_path / "c.txt").write_text("\n\n".join(texts))
    pd.DataFrame({"body": texts, "pmid": [str(1000 + i) for i in range(61)]}).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame({"body": texts}).to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    from_txt = load_documents({"path": str(tmp_path / "c.txt")})
    from_parquet = load_documents({"path": str(tmp_path / "c.parquet"), "text_field": "body", "id_field": "pmid"})
    from_jsonl = load_documents({"path": str(tmp_path / "c.jsonl"), "text_field": "body"})
    assert len(from_txt) == len(from_parquet) == len(from_jsonl) == 61
    assert from_parquet["doc_id"].iloc[3] == "1003"
    long_enough = sum(len(t.strip()) >= 100 for t in dict.fromkeys(t.strip() for t in texts))
    small = sample_documents(from_parquet, 10, 100, seed=4)
    big = sample_documents(from_parquet, 20, 100, seed=4)
    assert (small["text"].str.len() >= 100).all() and small["text"].is_unique
    assert list(big["doc_id"][:10]) == list(small["doc_id"])  # a larger n extends the sample
    assert not sample_documents(from_parquet, 10, 100, seed=5)["doc_id"].equals(small["doc_id"])
    with pytest.raises(ValueError, match=f"only {long_enough} distinct documents of at least 100 characters"):
        sample_documents(from_parquet, 1000, 100, seed=4)
    with pytest.raises(KeyError, match="no text field 'text'"):
        load_documents({"path": str(tmp_path / "c.parquet")})


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_corpus_file_line_that_is_not_utf8_is_named(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(b'{"text": "one"}\n{"text": "caf\xe9"}\n' if suffix == ".jsonl" else b"one\n\ncaf\xe9\n")
    line = 2 if suffix == ".jsonl" else 3
    with pytest.raises(ValueError, match=f"derive.corpus.path: {path} line {line}: not UTF-8 text"):
        load_documents({"path": str(path)})


def test_corpus_from_a_registered_hub_dataset_in_its_hub_schema(tmp_path):
    # ccdv/pubmed-summarization's schema: article, abstract; a local copy as data.data_dir holds it.
    folder = tmp_path / "pubmed"
    folder.mkdir()
    abstracts = [f"Background: trial {i} of drug X in {20 + i} patients. " * 12 for i in range(30)]
    pd.DataFrame({"article": ["full text"] * 30, "abstract": abstracts}).to_parquet(folder / "test.parquet")
    got = load_documents({"dataset": "pubmed", "split": "test"}, folder)
    assert got["text"].tolist() == abstracts
    sample = sample_documents(got, 25, 500, seed=0)
    assert len(sample) == 25 and (sample["text"].str.len() >= 500).all()


# --- hf backend --------------------------------------------------------------------------------


def test_hf_backend_batches_give_the_unbatched_greedy_replies(tiny_model_dir):
    from ptft.derive.backend import Request
    from ptft.derive.hf_backend import HFBackend

    backend = HFBackend(str(tiny_model_dir), batch_size=3)
    texts = ["anna went to the kitchen .", "ben sees a big cup in the hall . it was night .", "mia felt sad ."] * 2
    requests = [Request(str(i), ({"role": "user", "content": t},), {"max_tokens": 6, "temperature": 0.0})
                for i, t in enumerate(texts[:4])]  # fmt: skip
    batched, alone = {}, {}
    backend.run(requests, lambda r, rep: batched.__setitem__(r.key, rep), pytest.fail)
    one = HFBackend(str(tiny_model_dir), batch_size=1)
    one.run(requests, lambda r, rep: alone.__setitem__(r.key, rep), pytest.fail)
    assert batched == alone and len(batched) == 4
    assert all(0 < rep.completion_tokens <= 6 for rep in batched.values())


# --- the Dissecting analysis -------------------------------------------------------------------


def loglik_rows(values: dict) -> pd.DataFrame:
    """values: (doc, variant) -> per-token log-likelihood (n_tokens 4)."""
    factor = {"original": "original", "topic": "topic", "casual": "style", "rap": "style", "cf": "facts"}
    return pd.DataFrame([{"original_id": d, "variant": v, "factor": factor[v], "logp": 4 * ll, "n_tokens": 4}
                         for (d, v), ll in values.items()])  # fmt: skip


def test_decomposition_by_hand():
    base = {(d, v): -3.0 for d in ("a", "b") for v in ("original", "topic", "casual", "rap", "cf")}
    gains = {"original": 1.0, "cf": 0.75, "topic": 0.25, "casual": 0.5, "rap": 0.3}
    ft = {(d, v): -3.0 + gains[v] * (1 if d == "a" else 2) for d, v in base}
    change = per_document_change(loglik_rows(base), loglik_rows(ft))
    comp = components(change)
    # doc a: facts 1-0.75, topic 0.75-0.25, style 1-0.4, other 1-(0.25+0.5+0.6); doc b twice that.
    assert comp.loc["a"].to_dict() == pytest.approx({"facts": 0.25, "topic": 0.5, "style": 0.6, "other": -0.35})
    assert comp.loc["b"].to_dict() == pytest.approx({"facts": 0.5, "topic": 1.0, "style": 1.2, "other": -0.7})
    meta = {"checkpoint": "step9", "step": 9, "train_task": "t", "method": "full", "lr": 1e-3, "seed": 0}
    boot = {"resamples": 500, "confidence": 0.95, "seed": 0}
    ch, co = dissect_tables([(meta, loglik_rows(base), loglik_rows(ft))], boot)
    assert ch.set_index("variant").loc["cf", "change"] == pytest.approx(1.125)
    assert co.set_index("component").loc["style", "value"] == pytest.approx(0.9)
    assert (co["ci_low"] <= co["value"]).all() and (co["value"] <= co["ci_high"]).all() and (co["n"] == 2).all()


def test_documents_missing_a_variant_are_left_out_of_every_mean():
    base = {(d, v): -2.0 for d in ("a", "b") for v in ("original", "cf")}
    ft = {k: v + (1.0 if k[0] == "a" else 5.0) for k, v in base.items()}
    del ft[("b", "cf")]  # b's counterfactual was dropped: b is not paired
    change = per_document_change(loglik_rows(base), loglik_rows(ft))
    assert set(change["original_id"]) == {"a"}
    assert list(components(change).columns) == ["facts"]  # no topic or style variants: no such parts


def test_text_logliks_sum_each_tokens_log_probability(tiny_model_dir):
    import torch

    from ptft.checkpoints.load import load_pretrained

    model, tok = load_pretrained(tiny_model_dir)
    texts = ["anna went to the kitchen .", "yo ben rolled to the hall , yeah ."]
    logp, n = text_logliks(model, tok, texts, batch_size=2)
    for text, lp, k in zip(texts, logp, n, strict=True):
        ids = [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
        expected = sum(logits[i, ids[i + 1]].item() for i in range(len(ids) - 1))
        assert k == len(ids) - 1 and lp == pytest.approx(expected, abs=1e-4)
    assert np.all(logp < 0)


def test_variant_messages_are_stable():
    v = Variant("topic", "topic", "1", "", "Rewrite:\n{text}")
    assert v.messages("x") == ({"role": "user", "content": "Rewrite:\nx"},)


def test_dissecting_figure_labels_every_variant_and_component(tmp_path):
    import re

    from ptft.aggregate.figures import plot_dissecting

    base = {(d, v): -3.0 for d in ("a", "b", "c") for v in ("original", "topic", "casual", "rap", "cf")}
    boot = {"resamples": 200, "confidence": 0.95, "seed": 0}
    pairs = []
    for step, gain in ((10, 1.0), (20, 0.5)):
        ft = {(d, v): ll + gain * (1 + "abc".index(d)) * (v != "rap") for (d, v), ll in base.items()}
        meta = {"checkpoint": f"step{step}", "step": step, "train_task": "t", "method": "full", "lr": 1e-3, "seed": 0}
        pairs.append((meta, loglik_rows(base), loglik_rows(ft)))
    change, comps = dissect_tables(pairs, boot)
    plot_dissecting(change, comps, tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    texts = set(re.findall(r">([\w: ]+)</text>", (tmp_path / "d.svg").read_text()))
    assert {"original", "topic", "casual", "rap", "cf", "facts", "style", "other"} <= texts
    with pytest.raises(ValueError, match="no change rows"):
        plot_dissecting(change.iloc[0:0], comps, tmp_path / "e.png")
