"""Tiny random-init RoBERTa, GPT-NeoX, LLaMA and GPT-2 checkpoints with their tokenizers, for classifier-head tests."""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

TEXTS = [
    "the film was a delight from start to end",
    "dull",
    "a slow and tedious story that never finds its feet, with actors who look bored",
    "great fun",
]
MAX_LEN = 64
FAMILIES = ("roberta", "gpt_neox", "llama", "gpt2")


def _bpe(specials: list[str], texts=None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((texts or TEXTS) * 5, trainer)
    return tok


def tokenizer_of(family: str, texts=None) -> PreTrainedTokenizerFast:
    """RoBERTa's special tokens and ids (<s>=0, <pad>=1, </s>=2); decoders without a pad token, as shipped."""
    if family == "roberta":
        tok = _bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], texts)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        specials = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
        return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="<s>", sep_token="</s>", **specials)
    if family == "llama":
        tok = _bpe(["<unk>", "<s>", "</s>"], texts)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok = _bpe(["<|endoftext|>"], texts)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def base_model(family: str, vocab: int):
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if family == "roberta":
        # Position ids start after padding_idx (1): MAX_LEN tokens need MAX_LEN + pad_token_id + 1 positions.
        config = RobertaConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN + 2, pad_token_id=1, bos_token_id=0,
                               eos_token_id=2, type_vocab_size=1, **small)  # fmt: skip
        return RobertaForMaskedLM(config)
    if family == "gpt_neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN, **small))
    if family == "llama":
        config = LlamaConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN, num_key_value_heads=2,
                             bos_token_id=1, eos_token_id=2, **small)  # fmt: skip
        return LlamaForCausalLM(config)
    if family == "gpt_neo":  # TinyStories' layout: nn.Linear MLP projections under transformer.h, unlike GPT-2
        config = GPTNeoConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, window_size=8,
                              attention_types=[[["global", "local"], 1]], max_position_embeddings=MAX_LEN,
                              bos_token_id=0, eos_token_id=0)  # fmt: skip
        return GPTNeoForCausalLM(config)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=MAX_LEN, n_embd=32, n_layer=2, n_head=2))


def write_base(family: str, folder: Path, texts=None) -> Path:
    """A pre-trained (LM) checkpoint of ``family`` and its tokenizer in ``folder``, as a hub download gives."""
    tok = tokenizer_of(family, texts)
    base_model(family, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
