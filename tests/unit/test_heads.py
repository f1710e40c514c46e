"""ptft.finetune.heads on tiny random-init RoBERTa, GPT-NeoX, LLaMA and GPT-2 checkpoints saved in tmp folders."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
)

from helpers.tiny_classifiers import FAMILIES, MAX_LEN, TEXTS, base_model, tokenizer_of
from ptft.finetune.heads import collate, encode_inputs, head_layer, load_classifier, pooled_features


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    """{family: folder} of a pre-trained (LM) checkpoint and its tokenizer, as a hub download would give."""
    torch.manual_seed(0)
    out = {}
    for family in FAMILIES:
        tok = tokenizer_of(family)
        folder = tmp_path_factory.mktemp(f"base_{family}")
        base_model(family, len(tok)).save_pretrained(folder)
        tok.save_pretrained(folder)
        out[family] = folder
    return out


def _batch(tokenizer, texts=TEXTS):
    return collate(encode_inputs(tokenizer, texts, MAX_LEN), tokenizer.pad_token_id)


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_encode_and_collate(base_dirs):
    _, tok = load_classifier(base_dirs["roberta"], num_labels=2)
    ids = encode_inputs(tok, ["hello there", "a " * 200], max_length=10)
    assert ids[0][0] == tok.bos_token_id and ids[0][-1] == tok.eos_token_id
    assert len(ids[1]) == 10 and ids[1][-1] == tok.eos_token_id
    batch = collate(ids, tok.pad_token_id)
    n = len(ids[0])
    assert batch["input_ids"].shape == (2, 10)
    assert batch["input_ids"][0, n:].eq(tok.pad_token_id).all()
    assert batch["attention_mask"].sum(1).tolist() == [n, 10]
    assert batch["attention_mask"][0, :n].eq(1).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["standard", "linear"])
def test_save_load_round_trip(base_dirs, tmp_path, family, head):
    model, tok = load_classifier(base_dirs[family], num_labels=3, head=head, id2label=["neg", "neu", "pos"])
    assert tok.pad_token_id is not None and tok.padding_side == "right"
    assert model.config.get_text_config().pad_token_id == tok.pad_token_id or family == "roberta"
    batch = _batch(tok)
    with torch.no_grad():
        before = model(**batch).logits
    folder = _save(model, tok, tmp_path / "clf")
    # The saved head is rebuilt whatever `head` asks for.
    again, tok2 = load_classifier(folder, num_labels=3, head="standard")
    assert again.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert type(again.classifier if family == "roberta" else again.score) is type(
        model.classifier if family == "roberta" else model.score
    )
    assert dict(again.named_parameters()).keys() == dict(model.named_parameters()).keys()
    with torch.no_grad():
        after = again(**_batch(tok2)).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_roberta_linear_head(base_dirs):
    model, tok = load_classifier(base_dirs["roberta"], num_labels=2, dropout=0.1)
    names = [n for n, _ in model.named_parameters() if n.startswith("classifier.")]
    assert sorted(names) == ["classifier.out_proj.bias", "classifier.out_proj.weight"]
    assert model.classifier.dropout.p == 0.1
    assert model.config.ptft_head == "linear"
    batch = _batch(tok)
    with torch.no_grad():
        first = model.roberta(**batch).last_hidden_state[:, 0]
        logits = model(**batch).logits
    torch.testing.assert_close(logits, model.classifier.out_proj(first), rtol=0, atol=1e-6)

    standard, _ = load_classifier(base_dirs["roberta"], num_labels=2, head="standard")
    assert "classifier.dense.weight" in dict(standard.named_parameters())
    assert head_layer(standard) is standard.classifier.out_proj


@pytest.mark.parametrize("family", FAMILIES)
def test_features_times_head_give_logits(base_dirs, family):
    model, tok = load_classifier(base_dirs[family], num_labels=3)
    layer = head_layer(model)
    assert layer is (model.classifier.out_proj if family == "roberta" else model.score)
    batch = _batch(tok)
    with torch.no_grad():
        features, logits = pooled_features(model, **batch)
    assert features.shape == (len(TEXTS), 32) and logits.shape == (len(TEXTS), 3)
    bias = 0 if layer.bias is None else layer.bias
    torch.testing.assert_close(features @ layer.weight.T + bias, logits, rtol=0, atol=1e-5)
    with torch.no_grad():
        hidden = model.base_model(**batch).last_hidden_state
    if family == "roberta":
        torch.testing.assert_close(features, hidden[:, 0], rtol=0, atol=0)
    else:  # right padding: the last attended token
        last = batch["attention_mask"].sum(1) - 1
        torch.testing.assert_close(features, hidden[torch.arange(len(TEXTS)), last], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_changes_nothing(base_dirs, family):
    model, tok = load_classifier(base_dirs[family], num_labels=2)
    with torch.no_grad():
        features, logits = pooled_features(model, **_batch(tok))
        for i, text in enumerate(TEXTS):
            alone_features, alone_logits = pooled_features(model, **_batch(tok, [text]))
            torch.testing.assert_close(alone_logits[0], logits[i], rtol=0, atol=1e-5)
            torch.testing.assert_close(alone_features[0], features[i], rtol=0, atol=1e-5)


def test_through_peft(base_dirs):
    from peft import LoraConfig, get_peft_model

    for family, targets in (("roberta", ["query", "value"]), ("gpt_neox", ["query_key_value"])):
        model, tok = load_classifier(base_dirs[family], num_labels=2)
        wrapped = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=targets)).eval()
        layer = head_layer(wrapped)
        assert isinstance(layer, torch.nn.Linear) and layer.weight.requires_grad
        with torch.no_grad():
            layer.weight.add_(1.0)  # the trained copy, not the frozen original, must be the one used
            features, logits = pooled_features(wrapped, **_batch(tok))
        bias = 0 if layer.bias is None else layer.bias
        torch.testing.assert_close(features @ layer.weight.T + bias, logits, rtol=0, atol=1e-5)


def test_num_labels_mismatch_on_reload_raises(base_dirs, tmp_path):
    for family in ("roberta", "gpt_neox"):
        for saved, asked in ((2, 3), (3, 2)):  # 2 labels: transformers writes no id2label
            model, tok = load_classifier(base_dirs[family], num_labels=saved)
            folder = _save(model, tok, tmp_path / f"{family}_{saved}")
            with pytest.raises(ValueError, match=f"saved with {saved} labels, asked for num_labels={asked}"):
                load_classifier(folder, num_labels=asked)


def test_standard_classifier_refuses_linear(base_dirs, tmp_path):
    model, tok = load_classifier(base_dirs["roberta"], num_labels=2, head="standard")
    folder = _save(model, tok, tmp_path / "std")
    with pytest.raises(ValueError, match="standard head"):
        load_classifier(folder, num_labels=2, head="linear")
    again, _ = load_classifier(folder, num_labels=2, head="standard")
    assert "classifier.dense.weight" in dict(again.named_parameters())


def test_unsupported_family_raises(base_dirs, tmp_path):
    tok = tokenizer_of("roberta")
    config = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=MAX_LEN, pad_token_id=1)  # fmt: skip
    folder = _save(BertForMaskedLM(config), tok, tmp_path / "bert")
    with pytest.raises(ValueError, match="BertForSequenceClassification.*'bert'"):
        load_classifier(folder, num_labels=2)
    model, tok = load_classifier(folder, num_labels=2, head="standard")
    layer = head_layer(model)
    assert layer is model.classifier
    with torch.no_grad():
        features, logits = pooled_features(model, **_batch(tok))
    torch.testing.assert_close(features @ layer.weight.T + layer.bias, logits, rtol=0, atol=1e-5)


def test_bad_arguments(base_dirs):
    with pytest.raises(ValueError, match="head: expected one of"):
        load_classifier(base_dirs["roberta"], num_labels=2, head="mlp")
    with pytest.raises(ValueError, match="id2label"):
        load_classifier(base_dirs["roberta"], num_labels=3, id2label=["a", "b"])


def test_classifier_folder_without_head_weights_raises(base_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    model, tok = load_classifier(base_dirs["roberta"], num_labels=2)
    folder = _save(model, tok, tmp_path / "clf")
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="without the weights of its head.*classifier.out_proj.weight"):
        load_classifier(folder, num_labels=2)
