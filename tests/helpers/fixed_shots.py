"""Prompts with fixed shots (evaluate.fewshot: fixed): the same demonstrations before every query."""

from ptft.data.prompts import SHOT_SEPARATOR, Prompt

SHOTS = [
    "### Input_1: anna has a big cup in the hall .\n### Input_2: the cup is big .\n### Inference: entailment",
    "### Input_1: ben has a red hat on the bed .\n### Input_2: the hat is blue .\n### Inference: contradiction",
    "### Input_1: the fox is quick and the owl is wise .\n### Input_2: the owl sings .\n### Inference: neutral",
]
QUERIES = [
    "### Input_1: the dog is in the park .\n### Input_2: a dog is outside .\n### Inference:",
    "### Input_1: tom reads a book .\n### Input_2: tom sleeps .\n### Inference:",
    "### Input_1: x\n### Inference:",
    "### Input_1: sue has two cats and one dog at home .\n### Input_2: sue has pets .\n### Inference:",
    "### Input_1: the cup is big .\n### Inference:",
]


def fixed_prompts(shots=SHOTS, queries=QUERIES) -> list[Prompt]:
    parts = [*shots]
    starts = [sum(len(p) + len(SHOT_SEPARATOR) for p in parts[:i]) for i in range(len(parts) + 1)]
    return [Prompt(SHOT_SEPARATOR.join([*parts, q]), starts) for q in queries]
