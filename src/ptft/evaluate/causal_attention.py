"""SDPA whose plain causal mask stays implicit in compiled forwards, so the flash kernel runs.

Given no padding mask and no cached tokens, ``transformers`` lets SDPA apply causality itself
(``is_causal=True``): its fused flash kernel, which also skips the blocks above the diagonal.
Whether it may is decided in ``masking_utils._ignore_causal_mask_sdpa``. transformers 5.17 (the
version on the H200 machine of ``docs/performance.md``) says no whenever ``torch.compile`` traces,
so a compiled forward builds a ``rows × 1 × length × length`` boolean mask; SDPA then runs its
memory-efficient kernel over the whole square and reads the mask once per head. For the static
decoder's prompts (64 × 1,988 tokens of OLMo-1B) that is twice the attention arithmetic and about
4 GB of mask reads per layer. transformers 5.23 with torch 2.13 (this project's pins) skips the mask
while tracing too, unless dynamo reports that it is exporting.

:data:`NAME`, registered with ``transformers``, is SDPA with one change to its mask: the case
above, decided from the call's Python-level arguments (no tensor is read), gives no mask. Every
other call (a padding mask, a cache with tokens in it, a packed or custom mask) gets SDPA's own
mask unchanged. Evaluation switches a model to it where it compiles the forward
(:func:`use_causal_attention`); eagerly it computes what SDPA computes.
"""

from __future__ import annotations

from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import causal_mask_function, sdpa_mask

NAME = "ptft_causal_sdpa"


def causal_sdpa_mask(**kwargs):
    """SDPA's mask, or None where it would be the plain causal mask of the query over itself."""
    q_offset = kwargs.get("q_offset", 0)
    plain_causal = (
        kwargs.get("attention_mask") is None
        and kwargs.get("allow_is_causal_skip", True)
        and kwargs.get("mask_function", causal_mask_function) is causal_mask_function
        and kwargs.get("local_size") is None
        and isinstance(q_offset, int)  # a static cache's offset is a tensor: its slots may be empty
        and q_offset == 0
        and kwargs.get("kv_offset", 0) == 0
        and kwargs["q_length"] == kwargs["kv_length"]
    )
    return None if plain_causal else sdpa_mask(**kwargs)


AttentionInterface.register(NAME, sdpa_attention_forward)
AttentionMaskInterface.register(NAME, causal_sdpa_mask)


def use_causal_attention(model) -> bool:
    """Switch ``model`` from SDPA to :data:`NAME` (for good: it computes the same); other
    implementations are left as they are. Whether the model now uses it."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation == "sdpa":
        model.set_attn_implementation(NAME)
    return getattr(model.config, "_attn_implementation", None) == NAME
