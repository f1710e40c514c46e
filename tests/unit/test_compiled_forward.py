"""evaluate.compile: the compiled forward gives the eager scores and texts.

On a GPU ``auto`` compiles; here (CPU) the test forces it, so that the paths that call the
compiled forward (TokenProb, multiple choice with its choices packed after the context, the static decoder's prompt and
decode step) are traced by dynamo, and compared with eager. The backend is ``aot_eager``, dynamo's
tracing and AOTAutograd without inductor's code generation (a minute on 2 cores), so what is checked
is that every path traces and keeps its values; inductor's kernels are checked on the GPU
(``tests/benchmarks``).
"""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.fixed_shots import fixed_prompts
from ptft.evaluate import forward as forward_module
from ptft.evaluate.forward import compiling, forward, set_compile
from ptft.evaluate.generate import generate_greedy
from ptft.evaluate.multiple_choice import score_multiple_choice
from ptft.evaluate.tokenprob import score_token_prob

PROMPTS = [
    "### Input_1: anna has a big cup in the hall .\n ### Input_2: the cup is big .\n ### Inference:",
    "the fox is quick . the owl",
    "Consider the following texts: Text 1: ben has a hat . Text 2: the hat is not red . The relation is",
    "the cup is",
    "x",
]
CHOICES = [["big .", "small and red .", "in the hall"], ["quick", "not quick at all"], ["red", "blue ."],
           ["a", "b"], ["yes", "no"]]  # fmt: skip


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    mp = pytest.MonkeyPatch()
    mp.setattr(forward_module, "BACKEND", "aot_eager")

    def load():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3.0)  # wide: greedy choices are no near-ties
        return model

    eager, compiled = load(), load()
    set_compile(eager, "auto")  # a CPU: auto is eager
    set_compile(compiled, True)
    yield eager, compiled, AutoTokenizer.from_pretrained(tiny_model_dir)
    mp.undo()


def test_the_setting(models):
    eager, compiled, _ = models
    assert not compiling(eager) and forward(eager) is eager
    assert compiling(compiled) and forward(compiled) is forward(compiled) is not compiled
    assert "_ptft_compiled" not in dict(compiled.named_modules())  # not a submodule of its own model
    with pytest.raises(ValueError, match="evaluate.compile"):
        set_compile(eager, "yes")


def test_compiled_scores_equal_eager_ones(models):
    eager, compiled, tok = models
    labels = ["entailment", "neutral", "contradiction"]
    with torch.no_grad():
        for batch_size in (2, 5):  # two batch shapes: the dynamic graph serves both
            ref_pred, ref = score_token_prob(eager, tok, PROMPTS, labels, batch_size)
            pred, got = score_token_prob(compiled, tok, PROMPTS, labels, batch_size)
            assert pred.tolist() == ref_pred.tolist()
            np.testing.assert_allclose(got, ref, atol=1e-4)
        ref = score_multiple_choice(eager, tok, PROMPTS, CHOICES, 2)
        with pytest.MonkeyPatch.context() as mp:  # the GPU's path: choices packed after the context, compiled
            mp.setattr("ptft.evaluate.multiple_choice.PACKED_DEVICES", ("cuda", "cpu"))
            got = score_multiple_choice(compiled, tok, PROMPTS, CHOICES, 2)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    ref = generate_greedy(eager, tok, PROMPTS, 10, "\n", 2, decoder="generate")
    assert generate_greedy(compiled, tok, PROMPTS, 10, "\n", 2, decoder="static") == ref


def test_compiled_paths_from_a_shared_prefix_equal_eager_ones(models):
    eager, compiled, tok = models
    prompts = fixed_prompts()
    labels = ["entailment", "neutral", "contradiction"]
    ref_pred, ref = score_token_prob(eager, tok, prompts, labels, 2, shared_prefix=True)
    pred, got = score_token_prob(compiled, tok, prompts, labels, 2, shared_prefix=True)
    assert pred.tolist() == ref_pred.tolist()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    ref = generate_greedy(eager, tok, prompts, 10, "\n", 2, decoder="generate", shared_prefix=True)
    assert generate_greedy(compiled, tok, prompts, 10, "\n", 2, decoder="static", shared_prefix=True) == ref
