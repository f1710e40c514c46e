"""The prober's options for Ren & Sutherland's learning dynamics: EOS scored, the argmax response y*, rows by name."""

import pandas as pd
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from helpers.tiny_models import tiny_llama, train_bpe
from ptft.data.prompts import join_prompt_completion
from ptft.finetune.probes import ARGMAX, PROBE_COLUMNS, Prober

SENTENCES = [
    "human : where is the cup ? assistant : the cup is big .",
    "human : where is the box ? assistant : the box is small in the kitchen .",
    "human : who sees the fox ? assistant : anna sees the fox in the forest .",
    "the hat is red and the lamp is bright .",
] * 20

PROMPTS = ["human : where is the cup ?\nassistant :", "human : where is the box ?\nassistant :",
           "human : who sees the fox ?\nassistant :"]  # fmt: skip
RESPONSES = {
    "chosen": ["the cup is big .", "the box is small in the kitchen .", "anna sees the fox ."],
    "rejected": ["the cup is small .", "the box is big .", "ben sees the owl in the forest ."],
    "random_sentence": ["lamp red hat is .", "fox the anna sees big the kitchen .", "cup box ."],
}


@pytest.fixture(scope="module")
def setup():
    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe(SENTENCES, 300, ["<eos>", "<pad>"]), eos_token="<eos>",
                                  pad_token="<pad>")  # fmt: skip
    return tok, tiny_llama(tok)


def probe_set() -> pd.DataFrame:
    rows = [{"example": i, "prompt": p, "response_type": t, "response": RESPONSES[t][i]}
            for i, p in enumerate(PROMPTS) for t in RESPONSES]  # fmt: skip
    return pd.DataFrame(rows)


@torch.no_grad()
def plain(tok, model, prompt: str, response: str, eos: bool) -> tuple[float, float, int, float]:
    """(summed log-prob of the response, that of EOS after it, response tokens, summed argmax log-prob of the
    response tokens) from one plain ``model(...).logits`` forward pass."""
    prompt, response = join_prompt_completion(prompt, response)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    ids = p + r + [tok.eos_token_id]
    logps = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    at = range(len(p) - 1, len(p) + len(r) - 1)  # the positions predicting the response's tokens
    response_logp = sum(float(logps[i, ids[i + 1]]) for i in at)
    eos_logp = float(logps[len(p) + len(r) - 1, tok.eos_token_id])
    argmax = sum(float(logps[i].max()) for i in at) + (float(logps[len(p) + len(r) - 1].max()) if eos else 0.0)
    return response_logp, eos_logp, len(r), argmax


def by_name(rows) -> dict:
    df = pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
    return {(int(e), t): (lp, n) for e, t, lp, n in zip(df["example"], df["response_type"], df["logp"],
                                                       df["n_tokens"], strict=True)}  # fmt: skip


def test_eos_adds_one_scored_token_worth_log_p_eos(setup):
    tok, model = setup
    without = by_name(Prober(tok, probe_set(), 5).rows(model, 0))
    with_eos = by_name(Prober(tok, probe_set(), 5, eos=True).rows(model, 0))
    assert set(without) == set(with_eos) == {(i, t) for i in range(3) for t in RESPONSES}
    for (i, t), (logp, n) in without.items():
        response_logp, eos_logp, n_tokens, _ = plain(tok, model, PROMPTS[i], RESPONSES[t][i], eos=True)
        assert n == n_tokens and with_eos[i, t][1] == n + 1
        assert logp == pytest.approx(response_logp, abs=1e-4)
        assert with_eos[i, t][0] == pytest.approx(logp + eos_logp, abs=1e-4)
    assert model.training  # the prober leaves the model in training mode
    model.eval()


@pytest.mark.parametrize("eos", [False, True])
def test_argmax_rows_are_the_summed_max_log_prob_of_the_chosen_positions(setup, eos):
    tok, model = setup
    prober = Prober(tok, probe_set(), 5, eos=eos, argmax_of="chosen")
    rows = prober.rows(model, 7)
    model.eval()
    got = by_name(rows)
    assert {t for _, t in got} == {*RESPONSES, ARGMAX}
    assert all(r["step"] == 7 for r in rows) and len(rows) == 3 * len(RESPONSES) + 3
    for i in range(3):
        _, _, n_tokens, argmax = plain(tok, model, PROMPTS[i], RESPONSES["chosen"][i], eos)
        assert got[i, ARGMAX][0] == pytest.approx(argmax, abs=1e-4)
        assert got[i, ARGMAX][1] == got[i, "chosen"][1] == n_tokens + eos
        assert got[i, ARGMAX][0] >= got[i, "chosen"][0]  # y* is the most likely response at every position


def test_a_permuted_probe_set_gives_the_same_rows_by_name(setup):
    tok, model = setup
    ordered = by_name(Prober(tok, probe_set(), 5, eos=True, argmax_of="chosen").rows(model, 0))
    shuffled = probe_set().sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert list(shuffled["response_type"]) != list(probe_set()["response_type"])
    permuted = by_name(Prober(tok, shuffled, 5, eos=True, argmax_of="chosen").rows(model, 0))
    model.eval()
    assert ordered.keys() == permuted.keys()
    for key, (logp, n) in ordered.items():
        assert permuted[key][1] == n and permuted[key][0] == pytest.approx(logp, abs=1e-5)


def test_a_probe_set_must_name_each_row_once(setup):
    tok, _ = setup
    doubled = pd.concat([probe_set(), probe_set().iloc[:1]], ignore_index=True)
    with pytest.raises(ValueError, match=r"\(0, 'chosen'\)"):
        Prober(tok, doubled, 5)
    with pytest.raises(ValueError, match="argmax_of='gold' is none of its response types"):
        Prober(tok, probe_set(), 5, argmax_of="gold")
    with pytest.raises(ValueError, match="computed by the prober"):
        Prober(tok, probe_set().assign(response_type="argmax").iloc[:1], 5, argmax_of="argmax")


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompts_score_as_padded_rows_do(setup, lora):
    """Each prompt run once for its responses, on its KV cache: the padded rows' sums, token counts and
    argmax sums, also for rows cut to the window, one-token responses and a row without a prompt token."""
    import copy

    from peft import LoraConfig, get_peft_model

    from ptft.finetune.probes import encode_probes, response_logps, shared_prompt_logps

    tok, model = setup
    model = copy.deepcopy(model).eval()
    if lora:
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    long = " ".join(RESPONSES["chosen"] * 3)
    extra = [(0, "one_token", "."), (2, "long", long), (3, "long", long), (4, "no_prompt", "the cup")]
    prompts = {**dict(enumerate(PROMPTS)), 3: "human : " + " ".join(RESPONSES["rejected"] * 4) + "\nassistant :", 4: ""}
    added = pd.DataFrame([{"example": e, "prompt": prompts[e], "response_type": t, "response": r} for e, t, r in extra])
    rows = pd.concat([probe_set(), added], ignore_index=True)
    encoded = encode_probes(tok, rows, max_length=40, eos=True)
    assert max(len(ids) for ids, _ in encoded) == 40  # rows cut to the window
    assert min(len(ids) - sum(lab != -100 for lab in labels) for ids, labels in encoded) == 0  # no prompt token
    assert min(sum(lab != -100 for lab in labels) for _, labels in encoded) == 2  # "." and EOS

    calls = []  # (rows, whether the call starts from no cache: a prompt forward) of the LM's forward calls
    inner = model.get_base_model() if lora else model
    hook = inner.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((len(kwargs["input_ids"]), kwargs.get("past_key_values") is None)),
        with_kwargs=True,
    )
    padded = response_logps(model, encoded, 5, "cpu", argmax=True)
    shared = shared_prompt_logps(model, encoded, 8, argmax=True)  # two or three prompts a batch
    hook.remove()
    assert [n for _, n, _ in shared] == [n for _, n, _ in padded]
    for (lp, _, best), (ref_lp, _, ref_best) in zip(shared, padded, strict=True):
        assert lp == pytest.approx(ref_lp, abs=1e-4) and best == pytest.approx(ref_best, abs=1e-4)
    # Each distinct prompt ran once (the row without a prompt token went the padded way).
    distinct = {tuple(ids[: labels.count(-100)]) for ids, labels in encoded}
    assert sum(rows for rows, first in calls if first) == len(distinct - {()}) < len(encoded) - 1
