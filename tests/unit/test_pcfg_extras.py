"""Pieces of the PCFG study beside the world itself: the pruning rankings, the pre-training loss's labels and the
suite's manifest joined from its two pre-training runs."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ptft.interpret.pruning import RANKINGS, first_order_decrease, neuron_scores, ranked, top_neurons
from ptft.pcfg.pretrain import LOSSES, encode_samples
from ptft.pcfg.tokenizer import build_tokenizer
from ptft.pcfg.world import World, generate_splits

VOCAB = 50
WORLD = World.from_config({"grammar": {"seed": 0}, "window": 12, "count_window": 8, "occurrence": 2, "offset": 4})

# --- pruning rankings ----------------------------------------------------------------------------------------------


def test_rankings_from_the_first_order_decrease():
    decrease = [torch.tensor([0.5, -2.0, 0.0, 1.5]), torch.tensor([-0.25, 3.0])]
    magnitude = ranked(decrease, "magnitude")
    assert [t.tolist() for t in magnitude] == [[0.5, 2.0, 0.0, 1.5], [0.25, 3.0]]
    signed = ranked(decrease, "decrease")
    assert [t.tolist() for t in signed] == [[0.5, -2.0, 0.0, 1.5], [-0.25, 3.0]]
    signed[0][0] = 99.0  # a copy: the decrease it was ranked from is unchanged
    assert decrease[0][0].item() == 0.5
    assert RANKINGS == ("magnitude", "decrease")
    # The two rankings pick different neurons: magnitude takes (0, 1), whose removal should raise the loss.
    assert top_neurons(magnitude, 3) == [(1, 1), (0, 1), (0, 3)]
    assert top_neurons(ranked(decrease, "decrease"), 3) == [(1, 1), (0, 3), (0, 0)]
    with pytest.raises(ValueError, match=r"mechanistic\.pruning\.rankings: 'gradient' is not one of magnitude, "):
        ranked(decrease, "gradient")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         initializer_range=0.2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        ids = torch.randint(VOCAB, (3, 8), generator=g)
        labels = ids.clone()
        labels[:, :4] = -100  # the loss on a completion only
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def test_neuron_scores_of_each_ranking_on_a_tiny_llama():
    model = tiny_llama()
    decrease = first_order_decrease(model, batches())
    assert [t.shape for t in decrease] == [torch.Size([64]), torch.Size([64])]
    assert all(t.dtype == torch.float32 for t in decrease)
    assert any((t < 0).any() for t in decrease) and any((t > 0).any() for t in decrease)
    signed = neuron_scores(model, batches(), "decrease")
    magnitude = neuron_scores(model, batches(), "magnitude")
    default = neuron_scores(model, batches())
    for d, s, m, default_m in zip(decrease, signed, magnitude, default, strict=True):
        torch.testing.assert_close(s, d)
        torch.testing.assert_close(m, d.abs())
        torch.testing.assert_close(default_m, m)  # magnitude is the default (Jain et al.)
    assert top_neurons(signed, 5) != top_neurons(magnitude, 5)
    # The weights and their gradients are as they were.
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match=r"mechanistic\.pruning\.rankings"):
        neuron_scores(model, batches(), "sign")


# --- the pre-training loss -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(WORLD)


@pytest.fixture(scope="module")
def records():
    drawn = generate_splits(WORLD, {"task": "count", "operand": "a"}, {"train": 3}, 0)["train"]
    # A shorter hand-made sample last: it is padded to the others' length.
    short = {"prompt": "<sos> <count> a 8 <sot> a b a <eot> <art>", "answer": "2"}
    return [{"prompt": r["prompt"], "answer": r["answer"]} for r in drawn] + [short]


def test_the_sample_loss_labels_every_real_token(tokenizer, records):
    batch = encode_samples(tokenizer, records, "sample")
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == (4, WORLD.sample_length)
    assert mask[:3].all() and mask[3].sum() == 3 + 9 and not mask[3, 12:].any()  # padded right
    assert torch.equal(labels[mask == 1], ids[mask == 1])
    assert (labels[mask == 0] == -100).all()
    words = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert words == [*records[0]["prompt"].split(), records[0]["answer"], "<eos>"]
    assert "sample" in LOSSES and "answer" in LOSSES


def test_the_answer_loss_labels_only_the_answer_and_eos(tokenizer, records):
    batch = encode_samples(tokenizer, records, "answer")
    same = encode_samples(tokenizer, records, "sample")
    assert torch.equal(batch["input_ids"], same["input_ids"]) and torch.equal(batch["attention_mask"],
                                                                             same["attention_mask"])  # fmt: skip
    art, eos = tokenizer.convert_tokens_to_ids(["<art>", "<eos>"])
    for row, record in zip(range(len(records)), records, strict=True):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        at = (ids == art).nonzero().item()
        assert at == len(record["prompt"].split()) - 1
        assert (labels[: at + 1] == -100).all()  # <sos> ... <art>: not predicted
        scored = (labels != -100).nonzero().flatten().tolist()
        assert scored == [at + 1, at + 2]
        assert tokenizer.convert_ids_to_tokens(labels[scored].tolist()) == [record["answer"], "<eos>"]
        assert labels[at + 2].item() == eos
    assert (batch["labels"] != -100).sum().item() == 2 * len(records)


def test_an_unknown_loss_names_the_key(tokenizer, records):
    with pytest.raises(ValueError, match=r"checkpoints\.pcfg\.loss: 'tokens' is not one of sample, answer"):
        encode_samples(tokenizer, records, "tokens")


# --- the suite's manifest ------------------------------------------------------------------------------------------


def test_checkpoint_manifest_joins_the_pretraining_runs(tmp_path):
    from ptft.cli import main

    steps = [{"name": f"step{s}", "step": s, "tokens": s * 1056, "path": f"ck/step{s}"} for s in (1000, 2000)]
    scratch = [{"name": "scratch", "step": 2000, "tokens": 2000 * 1056, "path": "ck/scratch"}]
    pretrain = {"suite": "pcfg", "architecture": "GPT2LMHeadModel", "parameters": 1234, "tokens_per_step": 1056,
                "checkpoints": steps}  # fmt: skip
    baseline = {"suite": "pcfg", "architecture": "OtherModel", "parameters": 99, "tokens_per_step": 7,
                "checkpoints": scratch}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(pretrain))
    (tmp_path / "b.json").write_text(json.dumps(baseline))
    out = tmp_path / "m.json"
    argv = ["checkpoint-manifest", "--manifests", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--suite",
            "pcfg", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads(out.read_text())
    assert manifest == {**pretrain, "checkpoints": pretrain["checkpoints"] + baseline["checkpoints"]}
    assert [c["name"] for c in manifest["checkpoints"]] == ["step1000", "step2000", "scratch"]
    assert (manifest["architecture"], manifest["parameters"], manifest["tokens_per_step"]) == ("GPT2LMHeadModel",
                                                                                                1234, 1056)  # fmt: skip
    # In the other order, the other run's record and checkpoints come first.
    argv[2:4] = [str(tmp_path / "b.json"), str(tmp_path / "a.json")]
    assert main(argv) == 0
    swapped = json.loads(out.read_text())
    assert [c["name"] for c in swapped["checkpoints"]] == ["scratch", "step1000", "step2000"]
    assert (swapped["architecture"], swapped["parameters"], swapped["suite"]) == ("OtherModel", 99, "pcfg")
    # --manifests and --pointers exclude each other.
    with pytest.raises(SystemExit):
        main(["checkpoint-manifest", "--manifests", str(tmp_path / "a.json"), "--pointers", str(tmp_path / "b.json"),
              "--suite", "pcfg", "--out", str(out)])  # fmt: skip
