"""finetune.compile (ptft.finetune.compiled): training through compiled blocks is the eager training.

On a CPU the backend is ``aot_eager`` (dynamo's tracing and AOTAutograd's forward and backward
graphs, without inductor's code generation), so what is checked is that every block traces, trains
and gives the eager losses and weights; inductor's kernels and the speed are the GPU benchmark's
(``tests/benchmarks/bench_gpu.py --finetune-compile``).
"""

import copy

import pytest
import torch
from test_cuda_graphs import examples

from ptft.checkpoints.load import load_pretrained
from ptft.finetune import compiled
from ptft.finetune.train import train_loop

CFG = {"epochs": 1, "batch_size": 4, "grad_accum": 2, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_steps": 4,
       "save_every": 100, "precision": "fp32", "max_grad_norm": 1.0}  # fmt: skip


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def test_the_blocks_are_the_decoder_layers(tiny_model_dir):
    model, _ = load_pretrained(tiny_model_dir)
    found = compiled.blocks(model)
    assert found and found == list(model.model.layers)
    assert compiled.eligible(model, CFG, False) is None
    assert compiled.eligible(model, CFG, True) == "the run is sharded"
    assert compiled.eligible(model, {**CFG, "gradient_checkpointing": True}, False) == "gradient checkpointing is on"
    assert compiled.eligible(torch.nn.Sequential(torch.nn.Linear(2, 2)), CFG, False) == (
        "the model names no repeated blocks (_no_split_modules)")  # fmt: skip
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compiled.wanted(CFG, cuda) and not compiled.wanted({**CFG, "compile": "auto"}, cpu)
    assert compiled.wanted({**CFG, "compile": "auto"}, cuda) and compiled.wanted({**CFG, "compile": True}, cpu)


@pytest.mark.parametrize("batching", ["grouped", "packed"])
def test_compiled_blocks_train_as_the_eager_ones(tiny_model_dir, aot_eager, monkeypatch, batching):
    model, tok = load_pretrained(tiny_model_dir)
    data = examples(model.config.vocab_size, 32)
    cfg = {**CFG, "batching": batching}
    eager_model, compiled_model = copy.deepcopy(model), copy.deepcopy(model)
    eager = train_loop(eager_model, data, {**cfg, "compile": False}, 1e-3, 0, tok.pad_token_id)
    calls = []
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(self) or real(self, **kw))
    got = train_loop(compiled_model, data, {**cfg, "compile": True}, 1e-3, 0, tok.pad_token_id)
    layers = list(compiled_model.model.layers)
    assert calls == layers
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # traced, not run eagerly
    assert all(layer._compiled_call_impl is None for layer in layers)  # eager again after the loop
    torch.testing.assert_close(torch.tensor([r["loss"] for r in got.progress.log]),
                               torch.tensor([r["loss"] for r in eager.progress.log]), rtol=1e-5, atol=0)  # fmt: skip
    for (name, p), q in zip(compiled_model.named_parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_compile_true_where_the_run_cannot_stops_naming_the_key(tiny_model_dir):
    model, tok = load_pretrained(tiny_model_dir)
    cfg = {**CFG, "batching": "grouped", "compile": True, "gradient_checkpointing": True}
    with pytest.raises(ValueError, match=r"finetune.compile is true, but gradient checkpointing is on"):
        train_loop(model, examples(model.config.vocab_size, 8), cfg, 1e-3, 0, tok.pad_token_id)
