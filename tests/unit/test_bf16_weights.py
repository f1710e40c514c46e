"""bf16 copies of the matmul weights (ptft.finetune.bf16_weights), kept by the compiled AdamW step:
the same training as fp32 weights under autocast, with the fp32 weights everywhere outside the step.

On a CPU with bf16 autocast and the ``aot_eager`` backend (as test_compiled_blocks); the speed is
the GPU benchmark's (``tests/benchmarks/bench_gpu.py --finetune-compile``).
"""

import copy
import math

import pytest
import torch
from test_compiled_blocks import aot_eager  # noqa: F401 (a fixture)
from test_cuda_graphs import examples

from ptft.checkpoints.load import load_pretrained
from ptft.finetune import bf16_weights, compiled
from ptft.finetune.loss import completion_loss
from ptft.finetune.train import Diverged, gradient_norm, train_loop

CFG = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_steps": 6,
       "save_every": 100, "precision": "bf16", "batching": "packed", "max_grad_norm": 1.0, "compile": True}  # fmt: skip


REAL = bf16_weights.Bf16Weights


def linear_weights(model) -> list[torch.nn.Parameter]:
    return [p for m in model.modules() if type(m) is torch.nn.Linear for p in m.parameters(recurse=False)]


def test_copies_are_of_the_unshared_trained_linear_weights_and_swap_in_and_out(tiny_model_dir):
    model, _ = load_pretrained(tiny_model_dir)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied: the embedding reads it too
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    copies = bf16_weights.Bf16Weights(model, exclude=(model.model.layers[1].mlp.down_proj.weight,))
    expected = [p for p in linear_weights(model) if p.requires_grad and p is not model.lm_head.weight
                and p is not model.model.layers[1].mlp.down_proj.weight]  # fmt: skip
    assert len(copies) == len(expected) > 0
    params = list(model.parameters())
    holders = copies.holders(params)
    assert [h.dtype for h, p in zip(holders, params, strict=True) if h is not p] == [torch.bfloat16] * len(expected)
    for p in expected:
        torch.testing.assert_close(copies.copy_of[id(p)], p.detach().to(torch.bfloat16), rtol=0, atol=0)

    q = model.model.layers[0].self_attn.q_proj
    fp32 = q.weight
    with pytest.raises(RuntimeError, match="inside"), copies.swapped():
        assert q.weight is copies.copy_of[id(fp32)] and q.weight.dtype == torch.bfloat16
        raise RuntimeError("inside")
    assert q.weight is fp32 and list(model.parameters()) == params  # restored, on an error too

    with torch.no_grad():
        fp32.add_(1.0)
    copies.refresh()
    torch.testing.assert_close(copies.copy_of[id(fp32)], fp32.detach().to(torch.bfloat16), rtol=0, atol=0)


def test_bf16_gradient_norms_are_accumulated_in_fp32():
    torch.manual_seed(0)
    wide = [torch.zeros(300, requires_grad=True), torch.zeros(7, 5, requires_grad=True)]
    for p in wide:
        p.grad = torch.randn(p.shape).to(torch.bfloat16).float()
    narrow = [p.detach().to(torch.bfloat16).requires_grad_() for p in wide]
    for p, q in zip(wide, narrow, strict=True):
        q.grad = p.grad.to(torch.bfloat16)
    mixed = [narrow[0], wide[1]]
    ref = gradient_norm(wide)
    assert ref.dtype == gradient_norm(mixed).dtype == gradient_norm(narrow).dtype == torch.float32
    # the fp32 path's norm, bit for bit: the clipping coefficient is the same
    assert torch.equal(gradient_norm(mixed), ref) and torch.equal(gradient_norm(narrow), ref)


def run(model, tok, cfg, monkeypatch, enabled: bool, state_path=None):
    """The loop's steps (loss, gradient norm) and the Bf16Weights it made."""
    made, real = [], REAL
    monkeypatch.setattr(bf16_weights, "ENABLED", enabled)
    monkeypatch.setattr(bf16_weights, "Bf16Weights", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    params = list(model.parameters())
    result = train_loop(model, examples(model.config.vocab_size, 32), cfg, 1e-3, 0, tok.pad_token_id, state_path)
    assert list(model.parameters()) == params and all(p.dtype == torch.float32 for p in params)
    return [(r["loss"], r["grad_norm"]) for r in result.progress.log], made


def test_the_copies_train_as_fp32_weights_under_autocast_and_resume(tiny_model_dir, aot_eager, monkeypatch,  # noqa: F811
                                                                    tmp_path):  # fmt: skip
    """One micro-batch a step: the bf16 copies' training is autocast's, bit for bit (on this CPU), step
    for step and weight for weight; the state saved at step 3 holds the fp32 weights, and the run
    resumed from it rounds them into its copies and ends as the uninterrupted one."""
    model, tok = load_pretrained(tiny_model_dir)
    path, cfg = tmp_path / "state.pt", {**CFG, "save_every": 3}
    m_fp32, m_bf16, resumed = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    ref, none = run(m_fp32, tok, CFG, monkeypatch, enabled=False)
    got, made = run(m_bf16, tok, cfg, monkeypatch, enabled=True, state_path=path)
    # all but the LM head, whose gradient KeptGrads computes on a CPU (grad_buffers)
    assert not none and len(made) == 1 and len(made[0]) == len(linear_weights(model)) - 1
    assert id(m_bf16.lm_head.weight) not in made[0].copy_of
    assert got == ref and max(norm for _, norm in got) > CFG["max_grad_norm"]  # bitwise, through steps that clip
    for (name, p), q, p0 in zip(m_bf16.named_parameters(), m_fp32.parameters(), model.parameters(), strict=True):
        assert not torch.equal(p, p0), name  # it trained
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)

    saved = torch.load(path, weights_only=False)
    assert saved["step"] == 3 and all(v.dtype == torch.float32 for v in saved["model"].values())
    rest, _ = run(resumed, tok, cfg, monkeypatch, enabled=True, state_path=path)
    assert rest == got  # the saved log of steps 1-3, then the same steps 4-6
    for (name, p), q in zip(resumed.named_parameters(), m_bf16.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_more_micro_batches_a_step_keep_fp32_gradients(monkeypatch):
    assert bf16_weights.eligible(CFG)
    assert not bf16_weights.eligible({**CFG, "grad_accum": 2})
    assert not bf16_weights.eligible({**CFG, "precision": "fp32"})
    monkeypatch.setattr(bf16_weights, "ENABLED", False)
    assert not bf16_weights.eligible(CFG)


def test_the_compiled_step_writes_the_rounded_update_into_the_copies(aot_eager):  # noqa: F811
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 4))
    ref = torch.nn.Parameter(p.detach().clone())
    copy_ = torch.nn.Parameter(p.detach().to(torch.bfloat16))
    grad = torch.randn(6, 4).to(torch.bfloat16)
    copy_.grad, ref.grad = grad.clone(), grad.float()
    opt, ref_opt = torch.optim.AdamW([p], lr=0.1), torch.optim.AdamW([ref], lr=0.1)

    class One:
        def holders(self, params):
            return [copy_ if q is p else q for q in params]

    stepper = compiled.AdamWStep(opt, One())
    stepper.step(torch.tensor(4.0), 2.0, zero_grads=True)  # clipped by half
    ref.grad.mul_(2.0 / (4.0 + 1e-6))
    ref_opt.step()
    torch.testing.assert_close(p, ref, rtol=0, atol=0)
    torch.testing.assert_close(copy_.detach(), p.detach().to(torch.bfloat16), rtol=0, atol=0)
    assert (copy_.grad == 0).all() and copy_.grad.dtype == torch.bfloat16 and p.grad is None

    # A step whose loss or norm is not finite leaves the weights and their copies as they are.
    before, rounded = p.detach().clone(), copy_.detach().clone()
    copy_.grad = torch.full((6, 4), float("nan"), dtype=torch.bfloat16)
    stepper.step(torch.tensor(float("nan")), 2.0, zero_grads=False, finite=torch.tensor(False))
    assert torch.equal(p.detach(), before) and torch.equal(copy_.detach(), rounded)
    assert torch.isfinite(opt.state[p]["exp_avg"]).all() and torch.isfinite(opt.state[p]["exp_avg_sq"]).all()


def test_a_step_that_diverges_under_the_compiled_step_leaves_the_last_finite_weights(tiny_model_dir, aot_eager,  # noqa: F811
                                                                                     monkeypatch):  # fmt: skip
    """The compiled step is queued before the loss and the norm are read; a NaN step must not reach the weights."""
    model, tok = load_pretrained(tiny_model_dir)
    calls = []

    def nan_at_third(m, batch, fast, kept=None):
        calls.append(1)
        loss = completion_loss(m, batch, fast, kept)
        return loss * float("nan") if len(calls) == 3 else loss

    two, diverging = copy.deepcopy(model), copy.deepcopy(model)
    cfg = {**CFG, "schedule": "constant"}  # the first two steps' lr whatever the run's length
    run(two, tok, {**cfg, "max_steps": 2}, monkeypatch, enabled=True)
    monkeypatch.setattr(bf16_weights, "ENABLED", True)
    data = examples(model.config.vocab_size, 32)
    with pytest.raises(Diverged) as err:
        train_loop(diverging, data, cfg, 1e-3, 0, tok.pad_token_id, loss_fn=nan_at_third)
    assert err.value.step == 3 and math.isnan(err.value.loss)
    for (name, p), q in zip(diverging.named_parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
