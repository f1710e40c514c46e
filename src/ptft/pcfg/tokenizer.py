"""The PCFG world's tokenizer: one id per word of :func:`ptft.pcfg.world.vocabulary`, saved as a `transformers`
tokenizer with the checkpoints.

Prompts are space-separated words that start with their own ``<sos>``, so encoding adds no special tokens (no
post-processor). There is no unknown token: a word outside the vocabulary is an error of the caller, and
`tokenizers` raises on it ("Missing [UNK] token") rather than hiding it behind an id.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ptft.pcfg.world import World, vocabulary


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the world's vocabulary: bos ``<sos>``, eos ``<eos>``, pad ``<pad>``."""
    vocab = {word: i for i, word in enumerate(vocabulary(world))}
    tok = Tokenizer(models.WordLevel(vocab))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: `tokenizers` then joins the words with spaces, which gives the prompt text back.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<sos>", eos_token="<eos>", pad_token="<pad>", unk_token=None
    )
