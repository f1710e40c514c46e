"""The static-cache decoder (evaluate.decoder: static) gives generate()'s greedy texts.

On a GPU the static decoder's step is compiled with CUDA graphs; here (CPU, fp32) it runs eagerly,
which checks everything but the compilation: the cache, the masks and positions of left-padded
rows, the stop and EOS handling, and the batches' cache sizes.
"""

import pytest
import torch

from ptft.evaluate.batching import left_pad
from ptft.evaluate.generate import (
    AUTO_MAX_ROWS,
    CACHE_BUCKET,
    StaticDecoder,
    auto_batch_size,
    generate_greedy,
    generation_batch_size,
    in_halves_on_oom,
    resolve_decoder,
    stop_token_ids,
)

PROMPTS = [
    "### Input_1: anna has a big cup in the hall .\n ### Input_2: the cup is big .\n ### Inference:",
    "x",
    "the fox is quick . the owl",
    "Consider the following texts: Text 1: ben has a hat . Text 2: the hat is not red . The relation is",
    "the cup is",
]


@pytest.mark.parametrize("stop", ["\n", ".", ""])
@pytest.mark.parametrize("batch_size", [2, 16])
def test_static_decoder_gives_generates_texts(peaked, stop, batch_size):
    model, tok = peaked
    kwargs = {"max_new_tokens": 12, "stop": stop, "batch_size": batch_size, "return_truncated": True}
    ref, ref_cut = generate_greedy(model, tok, PROMPTS, decoder="generate", **kwargs)
    got, cut = generate_greedy(model, tok, PROMPTS, decoder="static", **kwargs)
    assert got == ref and cut == ref_cut
    assert len({t for t in ref if t}) >= 3  # the texts differ: the rows are not all the same


def reference(model, seqs, max_new_tokens):
    """Each sequence's greedy new tokens, by the whole forward of the sequence so far at every step."""
    out = []
    for seq in seqs:
        new = []
        for _ in range(max_new_tokens):
            new.append(int(model(input_ids=torch.tensor([seq + new])).logits[0, -1].argmax()))
        out.append(new)
    return out


@pytest.mark.parametrize(
    "seqs",
    [[[5], [9]], [[5], [7, 8, 9, 10, 11, 12]], [[3, 4], [7, 8, 9]]],
    ids=["one-token prompts", "one-token prompt among longer", "short"],
)
def test_the_first_decode_step_runs_each_prompts_last_token(peaked, seqs):
    model, tok = peaked
    batch = left_pad(seqs, tok.pad_token_id)
    args = (batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    with torch.no_grad():
        new = StaticDecoder(model, [], tok.pad_token_id)(*args, max_new_tokens=6)
        assert new.tolist() == reference(model, seqs, 6)


def test_a_prefix_of_all_but_the_last_token_runs_no_prompt_forward(peaked):
    from transformers import DynamicCache

    from ptft.evaluate.generate import behind
    from ptft.evaluate.prefix import expanded

    model, tok = peaked
    prefix = [4, 5, 6, 7, 8, 9]
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prefix]), past_key_values=cache, use_cache=True)
        inputs = behind(prefix, left_pad([[11], [12]], tok.pad_token_id))
        args = (inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"])
        new = StaticDecoder(model, [], tok.pad_token_id)(*args, max_new_tokens=5, past=expanded(model, cache, 2))
        assert new.tolist() == reference(model, [prefix + [11], prefix + [12]], 5)


def test_rows_after_a_stop_are_padding_and_the_loop_ends_early(peaked):
    model, tok = peaked
    batch = left_pad([tok.encode("the fox is quick . the owl"), tok.encode("anna has")], tok.pad_token_id)
    args = (batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    free = StaticDecoder(model, [], tok.pad_token_id)(*args, max_new_tokens=40)
    assert free.shape[1] == 40  # nothing stops it
    # Stop at the first row's third token: that row is padding after it, the other runs on.
    target = free[0, 2].item()
    decoder = StaticDecoder(model, [target], tok.pad_token_id)
    new = decoder(*args, max_new_tokens=40)
    assert new[0, :3].tolist() == free[0, :3].tolist() and (new[0, 3:] == tok.pad_token_id).all()
    hit = (free[1] == target).nonzero()
    end = int(hit[0]) if len(hit) else 40
    assert new[1, : end + 1].tolist() == free[1, : end + 1].tolist()
    # All rows stopped: the loop ends at its next read-back (every 8 steps), not at 40.
    assert new.shape[1] == (-(-(end + 1) // 8) * 8 + 1 if end < 32 else 40)
    assert decoder.shape == (2, CACHE_BUCKET)


def test_stop_tokens_are_eos_and_every_token_holding_the_stop(peaked):
    _, tok = peaked
    ids = stop_token_ids(tok, "\n")
    assert tok.eos_token_id in ids
    assert all("\n" in tok.decode([i]) for i in ids if i != tok.eos_token_id)
    others = [i for i in range(len(tok)) if i not in ids]
    assert not any("\n" in tok.decode([i]) for i in others)
    assert stop_token_ids(tok, "") == [tok.eos_token_id]


def test_decoder_choice(peaked):
    model, _ = peaked
    assert resolve_decoder(model, "auto") == "generate"  # a CPU: nothing to gain from graphs
    assert resolve_decoder(model, "static") == "static"
    assert resolve_decoder(model, "static", constrained=True) == "generate"
    with pytest.raises(ValueError, match="evaluate.decoder"):
        resolve_decoder(model, "fast")


def test_auto_batch_size_fills_the_free_memory_it_counts(peaked, monkeypatch):
    model, _ = peaked
    free = {"bytes": 10**9}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 2 * free["bytes"]))
    cfg = model.config
    # Per row, at least the static cache's keys and values: 2 x layers x width x positions x 4 bytes.
    cache_row = 2 * cfg.num_hidden_layers * cfg.hidden_size * CACHE_BUCKET * 4
    rows = auto_batch_size(model, 100, 20, limit=10**6)
    assert 1 <= rows <= 0.8 * free["bytes"] / cache_row
    free["bytes"] *= 4
    assert auto_batch_size(model, 100, 20, limit=10**6) in range(4 * rows, 4 * rows + 4)
    assert auto_batch_size(model, 900, 20, limit=10**6) < auto_batch_size(model, 100, 20, limit=10**6)
    assert auto_batch_size(model, 100, 20, limit=7) == 7
    free["bytes"] = 10**15  # room for thousands of rows: lm-evaluation-harness's cap
    assert auto_batch_size(model, 100, 20) == AUTO_MAX_ROWS == 64
    free["bytes"] = 0
    assert auto_batch_size(model, 100, 20) == 1


def test_a_batch_out_of_memory_runs_in_halves():
    done = []

    def run(batch):
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        done.append(list(batch))

    in_halves_on_oom(run, list(range(7)))
    assert sorted(sum(done, [])) == list(range(7))  # every row once, in batches that fit
    assert all(len(b) <= 2 for b in done)
    with pytest.raises(torch.OutOfMemoryError):
        in_halves_on_oom(lambda batch: run(batch * 3), [0])


def test_auto_batch_on_a_cpu_gives_the_same_texts(peaked):
    model, tok = peaked
    ref = generate_greedy(model, tok, PROMPTS, 8, "\n", 2, decoder="generate")
    assert generate_greedy(model, tok, PROMPTS, 8, "\n", "auto", decoder="generate") == ref
    assert generation_batch_size({"batch_size": 16, "generation_batch_size": None}) == 16
    assert generation_batch_size({"batch_size": 16, "generation_batch_size": "auto"}) == "auto"
