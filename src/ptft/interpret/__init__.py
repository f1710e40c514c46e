"""Model-agnostic mechanistic-interpretability tools for the analysis stages (Jain et al., ICLR 2024).

:mod:`~ptft.interpret.layers` finds a causal LM's transformer blocks and the output projection of
each block's MLP by module structure (the LLaMA family, GPT-NeoX and GPT-2 layouts, through a
``peft`` wrapper too) and reads the raw per-layer residual stream with hooks;
:mod:`~ptft.interpret.linear_probe` fits linear probes on those features layer by layer; and
:mod:`~ptft.interpret.pruning` ranks MLP neurons by the first-order Taylor estimate |weight ×
gradient| of their out-projection and zeroes the chosen ones for the length of a ``with`` block.
"""
