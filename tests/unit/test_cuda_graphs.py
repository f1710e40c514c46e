"""Graph-replayed fine-tuning steps (ptft.finetune.graphs): the padded, fixed-shape step computes the eager step.

The capture itself needs CUDA (the last test, skipped without it); the rest runs the graph's own
step function eagerly on a CPU, on the bucketed inputs it would be replayed with.
"""

import copy

import pytest
import torch

from ptft.checkpoints.load import load_pretrained
from ptft.finetune import graphs, packed_attention
from ptft.finetune.batching import IGNORE, collate, step_weight
from ptft.finetune.loss import completion_loss
from ptft.finetune.methods import get_method
from ptft.finetune.train import train_loop

CFG = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.0, "max_steps": 6,
       "save_every": 100, "precision": "bf16", "batching": "packed", "max_grad_norm": 1.0}  # fmt: skip


def examples(vocab: int, n: int, seed: int = 0, lo: int = 6, hi: int = 40) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for length in torch.randint(lo, hi, (n,), generator=g).tolist():
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        k = int(torch.randint(1, 4, (1,), generator=g))
        out.append((ids, [IGNORE] * (length - k) + ids[-k:]))
    return out


def test_buckets_pad_a_little_and_always():
    for n in [1, 63, 64, 65, 480, 511, 512, 1000, 4095, 4096, 9000]:
        b = graphs.bucket(n)
        step = max(64, 2 ** (n.bit_length() - 4))
        assert n < b <= n + step and b % step == 0, n
        assert b - n <= max(64, n / 8 + 1), n  # at most an eighth more, beyond the smallest bucket
    # A few shapes cover a short task's lengths: eight MNLI-length examples are 350-700 tokens.
    assert sorted({graphs.bucket(n) for n in range(350, 700)}) == [384, 448, 512, 576, 640, 704]


def test_the_bucketed_step_computes_the_eager_packed_step(tiny_model_dir):
    """Loss and every gradient of the graph's step function (a padding example, padded targets) equal
    the eager packed loss's, divided by the step's target count."""
    model, tok = load_pretrained(tiny_model_dir)
    data = examples(model.config.vocab_size, 5)
    batch = collate(data, "packed", tok.pad_token_id)
    n_target = step_weight(batch) + 3  # as if the step had another micro-batch
    with packed_attention.use_packed_attention(model):
        ref_model = copy.deepcopy(model)
        ref = completion_loss(ref_model, batch, fast=True) / n_target
        ref.backward()
        key, host = graphs.host_inputs(batch, tok.pad_token_id)
        length, n_bounds, n_targets = key
        n = batch["input_ids"].numel()
        assert length == graphs.bucket(n) and n_bounds == len(data) + 2 and n_targets % graphs.TARGET_BUCKET == 0
        static = graphs.Static(*key, "cpu")
        static.fill(host, n_target)
        assert static.ids[n:].eq(tok.pad_token_id).all() and static.bounds[-1] == length
        assert (static.targets != IGNORE).sum() == step_weight(batch)
        loss, total = graphs.forward_backward(model, static)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total / n_target, ref.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_row_beyond_the_longest_bucket_runs_eagerly(tiny_model_dir, monkeypatch):
    model, tok = load_pretrained(tiny_model_dir)
    batch = collate(examples(model.config.vocab_size, 4), "packed", tok.pad_token_id)
    monkeypatch.setattr(graphs, "MAX_TOKENS", batch["input_ids"].numel())
    assert graphs.host_inputs(batch, tok.pad_token_id) is None


def test_which_runs_take_graphs(tiny_model_dir):
    model, tok = load_pretrained(tiny_model_dir)
    full, dpo = get_method("full"), get_method("dpo")
    assert graphs.plain_completion(full.loss) and graphs.plain_completion(completion_loss)
    assert not graphs.plain_completion(dpo.loss)
    cuda = torch.device("cuda")
    with packed_attention.use_packed_attention(model):
        assert graphs.eligible(model, CFG, "packed", True, True, cuda, False) in (
            None, "this torch has no variable-length flash attention")  # fmt: skip
        assert graphs.eligible(model, CFG, "packed", True, True, torch.device("cpu"), False) == "not on a CUDA device"
        assert graphs.eligible(model, {**CFG, "precision": "fp32"}, "packed", True, True, cuda, False)
        assert graphs.eligible(model, CFG, "grouped", True, True, cuda, False)
        assert graphs.eligible(model, CFG, "packed", False, True, cuda, False)
        assert graphs.eligible(model, CFG, "packed", True, False, cuda, False)
        assert graphs.eligible(model, CFG, "packed", True, True, cuda, True) == "the run is sharded"
    assert graphs.eligible(model, CFG, "packed", True, True, cuda, False) == (
        "the model does not use ptft's packed attention")  # fmt: skip


def test_cuda_graphs_true_where_the_run_cannot_take_them_stops_naming_the_key(tiny_model_dir):
    model, tok = load_pretrained(tiny_model_dir)
    cfg = {**CFG, "precision": "fp32", "cuda_graphs": True}
    with pytest.raises(ValueError, match=r"finetune.cuda_graphs is true, but not on a CUDA device"):
        train_loop(model, examples(model.config.vocab_size, 8), cfg, 1e-3, 0, tok.pad_token_id)


def trained(model, data, cfg, tok, monkeypatch) -> tuple[list[float], list[graphs.Graphs]]:
    """The loop's step losses, and the Graphs it made (none when it ran eagerly)."""
    made, real = [], graphs.Graphs
    monkeypatch.setattr(graphs, "Graphs", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    result = train_loop(model, data, cfg, 1e-3, 0, tok.pad_token_id)
    monkeypatch.setattr(graphs, "Graphs", real)
    return [r["loss"] for r in result.progress.log], made


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("accum", [1, 2])  # graphs that own their gradients; graphs that add into kept ones
def test_graph_replayed_training_matches_eager_training_on_a_gpu(tiny_model_dir, monkeypatch, accum):
    """bf16 on a GPU: the same losses step by step as the eager loop (bf16 rounding apart), every micro-batch
    after a shape's first replayed, and the weights as close as bf16 training allows.

    OLMo's architecture, whose 1B model captured on an H200; the tiny LLaMA of the other tests copies
    a CPU tensor inside its forward, which a capture refuses (graphs then switch off)."""
    tok = load_pretrained(tiny_model_dir)[1]
    model = tiny_olmo_on_gpu(tok)
    data = examples(model.config.vocab_size, 64, lo=20, hi=120)
    cfg = {**CFG, "max_steps": 16 // accum, "grad_accum": accum}
    m0, m1 = copy.deepcopy(model), copy.deepcopy(model)
    eager, made0 = trained(m0, data, {**cfg, "cuda_graphs": False}, tok, monkeypatch)
    graphed, made1 = trained(m1, data, {**cfg, "cuda_graphs": True}, tok, monkeypatch)
    assert not made0 and len(made1) == 1
    g = made1[0]
    assert not g.off and g.captured >= 1 and g.replayed >= 1 and g.captured + g.replayed == 16
    # graphs that own their gradients leave none behind (they are freed after each step, as eagerly)
    assert g.own_grads == (accum == 1) and all((p.grad is None) == g.own_grads for p in m1.parameters())
    assert_trains_alike(graphed, eager, m1, m0, model)


def tiny_olmo_on_gpu(tok):
    """OLMo's architecture, tiny, on the GPU, attending with SDPA (hence ptft's packed attention)."""
    from transformers import OlmoConfig, OlmoForCausalLM

    torch.manual_seed(0)
    return OlmoForCausalLM(OlmoConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, pad_token_id=tok.pad_token_id,
                                      attn_implementation="sdpa")).cuda()  # fmt: skip


def assert_trains_alike(losses, ref_losses, model, ref_model, init_model):
    """bf16 training on a GPU: the same step losses (bf16 rounding apart), and every parameter moved
    from ``init_model`` as in the reference run, to within a tenth of how far it moved.

    Not the weights' largest difference: Adam turns a rounding difference in a gradient near zero
    into a full step of the other sign, so a few elements of a correct run differ by several steps
    (5e-3 after 16 steps of lr 1e-3 on the CPU, with only the optimizer step compiled). Relative to
    the movement, a different attention kernel gives 0.036 and the compiled path 0.048 (on the CPU,
    inductor and bf16 autocast), while an update with 0.8 of the lr gives 0.20 for every parameter."""
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=2e-2, atol=0)
    params = zip(model.named_parameters(), ref_model.parameters(), init_model.parameters(), strict=True)
    apart = {name: float((p - q).norm() / (q - p0).norm()) for (name, p), q, p0 in params}
    assert max(apart.values()) <= 0.1, {name: f"{r:.3f}" for name, r in apart.items() if r > 0.1}


def test_graphs_owning_their_gradients_capture_a_shape_only_while_two_more_sets_fit(monkeypatch):
    """Each graph that owns its gradients keeps a set: a new shape is captured only while two sets fit
    in the GPU's free memory and the graphs' sets within a quarter of its memory (else it runs eagerly);
    graphs adding into kept gradients need no room."""
    params = [torch.zeros(1000)]  # 4,000 bytes a set
    memory = {"free": 0, "total": 0}
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (memory["free"], memory["total"]))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 1_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1_000)
    batch = collate([([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8])], "packed", 0)
    captured = []
    for own, free, total, expect in [(True, 7_999, 10**9, False), (True, 8_001, 10**9, True),
                                     (True, 8_001, 15_999, False), (True, 8_001, 16_000, True),
                                     (False, 0, 0, True)]:  # fmt: skip
        memory.update(free=free, total=total)
        g = graphs.Graphs(None, params, 0, "test", own_grads=own)
        monkeypatch.setattr(g, "_capture", lambda *a: captured.append(a) or torch.tensor(1.0))
        captured.clear()
        assert (g.run(batch, 2) is not None) == expect and bool(captured) == expect
        assert g.full == (own and not expect)
