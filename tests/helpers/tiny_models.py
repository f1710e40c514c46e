"""Tiny models and tokenizers built in the test, for scoring tests that need real ``transformers`` classes."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM


def train_bpe(sentences: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``sentences`` (no post-processor: adds no special token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer)
    return tok


def tiny_llama(tokenizer) -> LlamaForCausalLM:
    """A random two-layer LLaMA over the tokenizer's vocabulary (seed 0), in eval mode.

    A wide init spreads the next-token distributions, so a misaligned gather changes the sums.
    """
    import torch

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int, n_positions: int = 32):
    """A random two-layer GPT-2 (absolute position embeddings: ``n_positions`` is a hard limit), seed 0."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()
