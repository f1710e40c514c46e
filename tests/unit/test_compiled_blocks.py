"""finetune.compile (ptft.finetune.compiled): training through compiled blocks and the compiled AdamW
step is the eager training.

On a CPU the backend is ``aot_eager`` (dynamo's tracing and AOTAutograd's forward and backward
graphs, without inductor's code generation), so what is checked is that every block traces, trains
and gives the eager losses and weights; inductor's kernels and the speed are the GPU benchmark's
(``tests/benchmarks/bench_gpu.py --finetune-compile``).
"""

import copy

import pytest
import torch
from test_cuda_graphs import assert_trains_alike, examples, tiny_olmo_on_gpu, trained

from ptft.checkpoints.load import load_pretrained
from ptft.finetune import compiled
from ptft.finetune.train import clip_gradients, train_loop

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
    steps = []
    real_step = compiled.AdamWStep.step
    monkeypatch.setattr(compiled.AdamWStep, "step", lambda self, *a, **k: steps.append(a) or real_step(self, *a, **k))
    got = train_loop(compiled_model, data, {**cfg, "compile": True}, 1e-3, 0, tok.pad_token_id)
    assert len(steps) == CFG["max_steps"] and max(float(norm) for norm, *_ in steps) > 1  # the steps, and clipping
    layers = list(compiled_model.model.layers)
    assert calls == layers
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # traced, not run eagerly
    assert all(layer._compiled_call_impl is None for layer in layers)  # eager again after the loop
    torch.testing.assert_close(torch.tensor([r["loss"] for r in got.progress.log]),
                               torch.tensor([r["loss"] for r in eager.progress.log]), rtol=1e-5, atol=0)  # fmt: skip
    for (name, p), q in zip(compiled_model.named_parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_the_blocks_compile_once_for_every_row_length(tiny_model_dir, aot_eager):
    model, _ = load_pretrained(tiny_model_dir)
    with compiled.compiled_blocks(model, "test"), torch.no_grad():
        for length in (7, 19, 33):
            model(input_ids=torch.randint(3, model.config.vocab_size, (2, length)), use_cache=False)
    assert torch._dynamo.utils.counters["frames"]["ok"] == 1  # one graph, shared by the layers and the lengths


def test_compile_true_where_the_run_cannot_stops_naming_the_key(tiny_model_dir):
    model, tok = load_pretrained(tiny_model_dir)
    cfg = {**CFG, "batching": "grouped", "compile": True, "gradient_checkpointing": True}
    with pytest.raises(ValueError, match=r"finetune.compile is true, but gradient checkpointing is on"):
        train_loop(model, examples(model.config.vocab_size, 8), cfg, 1e-3, 0, tok.pad_token_id)


@pytest.mark.parametrize("fused", [False, True])
def test_the_compiled_adamw_step_is_torchs_adamw_after_clipping(aot_eager, fused):
    """Clipping then AdamW (PyTorch's, single-tensor and fused) against the compiled step with the
    clipping coefficient inside, over steps that clip and steps that do not; then the state, saved
    by one, resumes in the other."""
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    ref = [torch.randn(s, requires_grad=True) for s in shapes]
    ours = [p.detach().clone().requires_grad_() for p in ref]
    kw = {"lr": 3e-2, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1, "fused": fused}
    ref_opt, our_opt = torch.optim.AdamW(ref, **kw), torch.optim.AdamW(ours, **kw)
    assert compiled.AdamWStep.usable(our_opt) and not compiled.AdamWStep.usable(torch.optim.AdamW(ours, amsgrad=True))
    stepper = compiled.AdamWStep(our_opt)
    for step, scale in enumerate([5.0, 0.01, 3.0, 0.02]):  # gradient norms above and below max_norm 1
        grads = [torch.randn(s) * scale for s in shapes]
        for p, q, g in zip(ref, ours, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        for group in (*ref_opt.param_groups, *our_opt.param_groups):
            group["lr"] = 3e-2 / (step + 1)  # a schedule: lr changes without a recompile
        norm = torch.nn.utils.get_total_norm([q.grad for q in ours])  # ours, before the reference clips its own
        clip_gradients(ref, 1.0)
        ref_opt.step()
        stepper.step(norm, 1.0, zero_grads=step % 2 == 0)
        for p, q in zip(ref, ours, strict=True):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
            assert (q.grad == 0).all() == (step % 2 == 0)
    for p, q in zip(ref, ours, strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(our_opt.state[q][key], ref_opt.state[p][key], rtol=1e-6, atol=1e-9)
    # Resume across paths: torch's optimizer on our state, our step on torch's.
    swapped_ref, swapped_ours = torch.optim.AdamW(ours, **kw), torch.optim.AdamW(ref, **kw)
    swapped_ref.load_state_dict(our_opt.state_dict())
    swapped_ours.load_state_dict(ref_opt.state_dict())
    grads = [torch.randn(s) for s in shapes]
    for p, q, g in zip(ref, ours, grads, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    swapped_ref.step()  # on ours
    compiled.AdamWStep(swapped_ours).step(torch.tensor(0.0), 1.0, zero_grads=False)  # on ref, unclipped
    for p, q in zip(ref, ours, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor's GPU kernels need a CUDA device")
def test_compiled_blocks_and_step_under_graphs_train_as_eager_on_a_gpu(tiny_model_dir, monkeypatch):
    """bf16 on a GPU with inductor: compiled blocks captured in CUDA graphs, and the compiled AdamW
    step, follow the eager loop step by step (bf16 rounding apart)."""
    tok = load_pretrained(tiny_model_dir)[1]
    model = tiny_olmo_on_gpu(tok)
    data = examples(model.config.vocab_size, 64, lo=20, hi=120)
    cfg = {**CFG, "precision": "bf16", "batching": "packed", "grad_accum": 1, "max_steps": 16}
    m0, m1 = copy.deepcopy(model), copy.deepcopy(model)
    eager, _ = trained(m0, data, cfg, tok, monkeypatch)
    got, made = trained(m1, data, {**cfg, "cuda_graphs": True, "compile": "auto"}, tok, monkeypatch)
    assert len(made) == 1 and not made[0].off and made[0].replayed >= 1
    assert_trains_alike(got, eager, m1, m0, model)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_the_per_tensor_form_of_the_step_is_the_foreach_form(monkeypatch, backend):
    """compiled.STEP_FORM: the two forms of the step, with bf16 copies, weight decay and zeroing, give
    the same weights, copies and moments bit for bit, and leave a non-finite step undone."""
    monkeypatch.setattr(compiled, "BACKEND", backend)
    torch._dynamo.reset()
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    got = {}
    for form in ("foreach", "per_tensor"):
        monkeypatch.setattr(compiled, "STEP_FORM", form)
        params = [torch.nn.Parameter(x.clone()) for x in start]
        copies = [torch.nn.Parameter(x.to(torch.bfloat16)) for x in start[:2]]  # the first two are copied

        class Two:
            def __init__(self, copies):
                self.copies = copies

            def holders(self, ps):
                return [self.copies[i] if i < 2 else q for i, q in enumerate(ps)]

        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        step = compiled.AdamWStep(opt, Two(copies))
        for k, gs in enumerate(grads):
            for h, g in zip(step.holders(params), gs, strict=True):
                h.grad = g.to(h.dtype, copy=True)  # the step zeroes it in place
            bad = k == 1  # the second step is not finite: nothing moves
            step.step(torch.tensor(3.0), 1.0, zero_grads=True, finite=torch.tensor(not bad))
        got[form] = [*params, *copies, *(opt.state[q][key] for q in params for key in ("exp_avg", "exp_avg_sq"))]
    assert all(torch.equal(a, b) for a, b in zip(got["foreach"], got["per_tensor"], strict=True))
