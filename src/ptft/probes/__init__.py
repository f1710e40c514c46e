"""The learning-dynamics probe sets (Ren & Sutherland 2025): ``ptft build-probes``.

A probe set holds, for each probe prompt, one response of each type (chosen, rejected, their LLM
rewrites, a sampled initial response, irrelevant, random and shuffled responses), in the columns
``example, prompt, response_type, response`` that a fine-tuning run's prober reads
(:mod:`ptft.finetune.probes`). :func:`ptft.probes.build.build_probe_set` makes it; the rewrite
instructions are :mod:`ptft.probes.templates`, the command line :mod:`ptft.probes.cli`.
"""

# The probe set's format, shared by its builder and the prober; here, free of torch, so that the plan
# can check a study's probe sets without loading it.
PROBE_SET_COLUMNS = ("example", "prompt", "response_type", "response")
ARGMAX = "argmax"  # the response type of the argmax rows (the prober's argmax_of), never a text of the set
