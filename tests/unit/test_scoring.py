import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.eval_data import write_eval_data
from ptft.evaluate.batching import left_pad
from ptft.evaluate.classify import classify, label_sequences, match_label, trie_allowed
from ptft.evaluate.generate import cut_at_stop, generate_greedy
from ptft.evaluate.metrics import accuracy, rouge_l
from ptft.evaluate.tokenprob import label_token_sets, score_token_prob


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


PROMPTS = [
    "### Input_1: anna has a big cup in the hall .\n ### Input_2: the cup is big .\n ### Inference:",
    "x",
    "the fox is quick . the owl",
    "Consider the following texts: Text 1: ben has a hat . Text 2: the hat is not red . The relation is",
] * 5


def test_label_token_sets_include_spaced_and_unspaced(model_and_tokenizer):
    _, tok = model_and_tokenizer
    sets = label_token_sets(tok, ["yes", "no"])
    assert tok.convert_tokens_to_ids("Ġyes") in sets[0] and tok.convert_tokens_to_ids("yes") in sets[0]


def test_token_prob_matches_a_direct_computation(model_and_tokenizer):
    model, tok = model_and_tokenizer
    labels = ["entailment", "neutral", "contradiction"]
    pred, scores = score_token_prob(model, tok, PROMPTS[:4], labels, batch_size=4)
    sets = label_token_sets(tok, labels)
    for i, prompt in enumerate(PROMPTS[:4]):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        expected = [max(logp[j].item() for j in s) for s in sets]
        np.testing.assert_allclose(scores[i], expected, atol=1e-5)
        assert pred[i] == int(np.argmax(expected))


def test_token_prob_is_independent_of_batch_size(model_and_tokenizer):
    model, tok = model_and_tokenizer
    labels = ["yes", "no"]
    p1, s1 = score_token_prob(model, tok, PROMPTS, labels, batch_size=1)
    p16, s16 = score_token_prob(model, tok, PROMPTS, labels, batch_size=16)
    assert (p1 == p16).all()
    np.testing.assert_allclose(s1, s16, atol=1e-4)


def test_generation_is_independent_of_batch_size(model_and_tokenizer):
    model, tok = model_and_tokenizer
    g1 = generate_greedy(model, tok, PROMPTS, max_new_tokens=8, stop="\n", batch_size=1)
    g16 = generate_greedy(model, tok, PROMPTS, max_new_tokens=8, stop="\n", batch_size=16)
    assert g1 == g16
    assert all("\n" not in g for g in g1)


def test_left_pad_positions_count_real_tokens():
    batch = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_metrics():
    assert accuracy(["yes", "no"], ["yes", "yes"]) == [1.0, 0.0]
    assert rouge_l(["the cat sat"], ["the cat sat"]) == [1.0]
    # LCS "the cat" = 2 of 3 tokens each way: F = 2/3
    assert rouge_l(["the cat ran"], ["the cat sat"])[0] == pytest.approx(2 / 3)
    assert rouge_l([""], ["a b"]) == [0.0]
    assert cut_at_stop(" a summary .\n### Input", "\n") == "a summary ."


def _constrained_reference(model, tok, prompt, labels):
    """Constrained greedy decoding written out: unbatched, no cache, one token at a time."""
    seqs = label_sequences(tok, labels)
    ids, out = tok(prompt, add_special_tokens=False)["input_ids"], []
    while True:
        options = {s[len(out)] for s in seqs if len(s) > len(out) and list(s[: len(out)]) == out}
        if tuple(out) in seqs:
            options.add(tok.eos_token_id)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        best = max(sorted(options), key=lambda t: logits[t].item())
        if best == tok.eos_token_id:
            return seqs[tuple(out)]
        out.append(best)
        if not any(len(s) > len(out) and list(s[: len(out)]) == out for s in seqs):
            return seqs[tuple(out)]


@pytest.mark.parametrize("labels", [["entailment", "neutral", "contradiction"], ["yes", "no"]])
def test_constrained_generation_emits_a_label_as_written_out(model_and_tokenizer, labels):
    model, tok = model_and_tokenizer
    cfg = {"classification": "constrained", "batch_size": 16, "stop": "\n", "max_new_tokens": {"classification": 5}}
    predictions, logprobs = classify(model, tok, PROMPTS, labels, cfg)
    assert predictions == [_constrained_reference(model, tok, p, labels) for p in PROMPTS]
    assert classify(model, tok, PROMPTS, labels, {**cfg, "batch_size": 1})[0] == predictions
    np.testing.assert_allclose(logprobs, score_token_prob(model, tok, PROMPTS, labels, 16)[1])


def test_free_generation_matches_labels_in_the_generated_text(model_and_tokenizer):
    model, tok = model_and_tokenizer
    labels = ["entailment", "neutral", "contradiction"]
    cfg = {"classification": "free", "batch_size": 16, "stop": "\n", "max_new_tokens": {"classification": 5}}
    predictions, _ = classify(model, tok, PROMPTS, labels, cfg)
    texts = generate_greedy(model, tok, PROMPTS, 5, "\n", 16)
    assert predictions == [match_label(t, labels) for t in texts]
    assert match_label("It is NEUTRAL, not entailment", labels) == "neutral"
    assert match_label("now know nothing", ["yes", "no"]) == ""  # whole words only
    assert match_label("no. yes", ["yes", "no"]) == "no"
    assert match_label("", labels) == ""
    with pytest.raises(ValueError, match="evaluate.classification"):
        classify(model, tok, PROMPTS, labels, {**cfg, "classification": "greedy"})


def test_trie_allows_only_label_continuations():
    allowed = trie_allowed([(5,), (5, 6), (7, 8)], eos_id=2)
    assert allowed([]) == [5, 7]
    assert allowed([5]) == [2, 6]  # a whole label, or the longer one
    assert allowed([7]) == [8]
    assert allowed([5, 6]) == [2] and allowed([5, 2]) == [2]


def test_one_model_load_for_all_eval_sets_and_formats(tiny_model_dir, tmp_path, monkeypatch):
    from ptft.evaluate import run

    write_eval_data(tmp_path)
    loads = []
    real = run.load_pretrained
    monkeypatch.setattr(run, "load_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k))
    meta = {"model": "ft/x", "checkpoint": "x", "train_task": "toy_nli", "method": "full", "lr": 0.001, "seed": 0,
            "shots": 0}  # fmt: skip
    evaluations = [{"eval_set": "toy_nli", "relation": "in-domain", "formats": ["default", "instruct", "io"]},
                   {"eval_set": "toy_summary", "relation": "cross-task", "formats": ["default", "io"]}]  # fmt: skip
    cfg = {"batch_size": 4, "max_new_tokens": {"classification": 5, "generation": 4}, "stop": "\n",
           "rouge_stemmer": False}  # fmt: skip
    df = run.evaluate_model(tiny_model_dir, meta, evaluations, tmp_path / "data", cfg, seed=0)
    assert len(loads) == 1
    assert sorted(set(zip(df["eval_set"], df["format"], strict=True))) == [
        ("toy_nli", "default"), ("toy_nli", "instruct"), ("toy_nli", "io"), ("toy_summary", "default"),
        ("toy_summary", "io")]  # fmt: skip
    assert len(df) == 5 * 6


def test_scorers_report_progress_per_batch(model_and_tokenizer, monkeypatch, capsys):
    from ptft.evaluate import batching

    model, tok = model_and_tokenizer
    monkeypatch.setattr(batching, "PROGRESS_SECONDS", 0)
    score_token_prob(model, tok, PROMPTS, ["yes", "no"], batch_size=4)
    generate_greedy(model, tok, PROMPTS[:4], max_new_tokens=2, stop="\n", batch_size=2)
    err = capsys.readouterr().err
    assert all(f"TokenProb: {100 * k // 5:3d}%" in err and f"{4 * k}/20" in err for k in range(1, 6))
    assert "generation:  50%" in err and "2/4" in err


def test_a_model_split_over_devices_scores_as_one(tiny_model_dir, tmp_path, monkeypatch):
    """evaluate.gpus > 1 splits the model by layers (device_map); here half of it is offloaded to disk,
    the CPU's stand-in for a second GPU: accelerate's hooks then move the activations between them."""
    from transformers import AutoModelForCausalLM

    from ptft.checkpoints import load
    from ptft.evaluate import run
    from ptft.evaluate.forward import compiling, spans_devices
    from ptft.evaluate.generate import resolve_decoder

    write_eval_data(tmp_path)
    # lm_head is tied to the embedding: both on one device.
    split = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "disk",
             "model.rotary_emb": "cpu", "lm_head": "cpu"}  # fmt: skip
    loaded, real = [], load._load_model

    def load_split(name, kwargs, dtype, device):
        if device != load.SPLIT:
            return real(name, kwargs, dtype, device)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=split,
                                                     offload_folder=str(tmp_path / "offload"), **kwargs)  # fmt: skip
        loaded.append(model)
        return model

    monkeypatch.setattr(load, "_load_model", load_split)
    meta = {"model": "ft/x", "checkpoint": "x", "train_task": "toy_nli", "method": "full", "lr": 0.001, "seed": 0,
            "shots": 0}  # fmt: skip
    evaluations = [{"eval_set": "toy_nli", "relation": "in-domain", "formats": ["default"]},
                   {"eval_set": "toy_summary", "relation": "cross-task", "formats": ["default"]}]  # fmt: skip
    cfg = {"batch_size": 4, "max_new_tokens": {"classification": 5, "generation": 4}, "stop": "\n",
           "rouge_stemmer": False, "compile": True, "decoder": "static"}  # fmt: skip
    got = run.evaluate_model(tiny_model_dir, meta, evaluations, tmp_path / "data", cfg, seed=0, gpus=2)
    (model,) = loaded
    assert spans_devices(model) and not compiling(model) and resolve_decoder(model, "static") == "generate"
    one = {**cfg, "compile": False, "decoder": "generate"}
    ref = run.evaluate_model(tiny_model_dir, meta, evaluations, tmp_path / "data", one, seed=0, gpus=1)
    assert len(got) == len(ref) == 2 * 6
    assert list(got["prediction"]) == list(ref["prediction"])
    assert list(got["score"]) == list(ref["score"])
