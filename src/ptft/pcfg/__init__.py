"""The PCFG world of Jain et al. (ICLR 2024), "Mechanistically analyzing the effects of fine-tuning on
procedurally defined tasks".

A probabilistic context-free grammar over the terminals a, b, c generates the texts; a task token and two
operands ask for a fact about the text's tail (a count, a pair count, an index, a token). A small
GPT-2-architecture model pre-trained on samples drawn online under an operand prior is the checkpoint
suite; fine-tuning on one (task, operand), optionally with a spurious correlation, is the study.

- ``grammar``: the grammar and fast sampling of text windows;
- ``world``: the tasks, the vocabulary and answer words, records, batches and dataset splits;
- ``tokenizer``: the word-level tokenizer over the world's vocabulary;
- ``pretrain``: the pre-training run (and its "scratch" baseline), resumable;
- ``cli``: the ``pretrain-pcfg`` and ``pcfg-data`` sub-commands.
"""
