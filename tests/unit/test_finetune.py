"""The fine-tuning engine: methods, batching, probes, lr selection, and resumption after a kill."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ptft import signals
from ptft.checkpoints.load import load_pretrained
from ptft.data.convert import to_canonical
from ptft.data.registry import get_dataset
from ptft.finetune import methods
from ptft.finetune.batching import IGNORE, collate_packed, collate_padded, encode_examples, template_segments
from ptft.finetune.grad_buffers import KeptGrads
from ptft.finetune.loss import completion_loss
from ptft.finetune.methods.lpft import fit_linear_head, label_token_ids
from ptft.finetune.select import select_lr
from ptft.finetune.train import finetune
from ptft.toy.generate import generate_splits

CFG = {
    "epochs": 1, "batch_size": 8, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.0, "max_length": 256,
    "max_steps": None, "format": "default", "save_every": 1000, "precision": "fp32", "batching": "grouped",
    "gradient_checkpointing": False, "max_grad_norm": 1.0, "peak_tflops": None,
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "save": "merged"},
    "lpft": {"l2": 0.001, "max_iter": 50, "batch_size": 16},
    "probes": None,
}  # fmt: skip


def cfg(**over):
    return {**CFG, **over}


def write_task(tmp_path, name, n, seed=0):
    spec = get_dataset(name)
    raw = generate_splits(spec, {"train": n}, seed)["train"]
    df = pd.DataFrame(to_canonical(spec, "train", raw, range(len(raw))))
    path = tmp_path / f"{name}.parquet"
    df.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def nli_data(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("nli"), "toy_nli", 48)


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_lora_trains_only_adapter_parameters(tiny_model_dir, nli_data, tmp_path):
    model, _ = load_pretrained(tiny_model_dir)
    wrapped = methods.apply_lora(model, CFG["lora"])
    names = methods.trainable_names(wrapped)
    assert names and all("lora_A" in n or "lora_B" in n for n in names)

    summary = finetune(tiny_model_dir, nli_data, "toy_nli", cfg(lora={**CFG["lora"], "save": "adapter"}), 1e-2, 0,
                       tmp_path / "adapter", tmp_path / "state_a", "lora")  # fmt: skip
    assert summary["n_trainable_parameters"] < summary["n_parameters"] / 5
    adapter_dir = tmp_path / "adapter" / "model"
    assert (adapter_dir / "adapter_config.json").exists() and (adapter_dir / "ptft_adapter.json").exists()
    loaded, _ = load_pretrained(adapter_dir)
    base = weights(tiny_model_dir)
    lora_b = [v for k, v in loaded.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # the adapters moved from their zero init
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in loaded.state_dict().items()
              if "lora_" not in k}  # fmt: skip
    assert all(torch.equal(frozen[k], v) for k, v in base.items())  # every base weight is untouched

    finetune(tiny_model_dir, nli_data, "toy_nli", cfg(), 1e-2, 0, tmp_path / "merged", tmp_path / "state_m", "lora")
    merged = weights(tmp_path / "merged" / "model")
    assert set(merged) == set(base)  # a plain checkpoint, no adapter keys
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only the adapted linear layers
    # The merged model computes what the adapter model computes.
    x = torch.tensor([[5, 6, 7, 8, 9]])
    merged_model, _ = load_pretrained(tmp_path / "merged" / "model")
    torch.testing.assert_close(merged_model(x).logits, loaded(x).logits, atol=1e-4, rtol=1e-4)


def test_lpft_probes_the_label_rows_then_finetunes(tiny_model_dir, nli_data, tmp_path):
    task = get_dataset("toy_nli").task
    model, tok = load_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = pd.read_parquet(nli_data).to_dict("records")
    stats = fit_linear_head(model, tok, task, records, "default", CFG["lpft"], "cpu")
    label_ids = label_token_ids(tok, task)
    head = model.get_output_embeddings().weight
    assert head is not model.get_input_embeddings().weight and not model.config.tie_word_embeddings
    assert stats["lp_accuracy_after"] >= stats["lp_accuracy_before"]
    assert stats["lp_accuracy_after"] > 0.5  # the frozen features of 48 examples are separable enough
    other = [i for i in range(head.shape[0]) if i not in label_ids]
    assert torch.equal(head[other], before["lm_head.weight"][other])  # only the label rows moved
    assert not torch.equal(head[label_ids], before["lm_head.weight"][label_ids])
    for k, v in model.state_dict().items():  # the features are frozen: nothing else changed
        if k != "lm_head.weight":
            assert torch.equal(v, before[k]), k

    summary = finetune(tiny_model_dir, nli_data, "toy_nli", cfg(), 1e-3, 0, tmp_path / "ft", tmp_path / "st", "lpft")
    assert summary["lp_accuracy_after"] == pytest.approx(stats["lp_accuracy_after"])
    saved, _ = load_pretrained(tmp_path / "ft" / "model")
    assert not saved.config.tie_word_embeddings  # the probed head is saved as a head of its own
    assert summary["n_trainable_parameters"] == summary["n_parameters"]


def test_lpft_and_lora_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="lpft fits a linear head"):
        methods.get_method("lpft").check_task("toy_summary", get_dataset("toy_summary").task.kind)
    with pytest.raises(ValueError, match="needs method instruct"):
        methods.get_method("lora").check_task("toy_chat", get_dataset("toy_chat").task.kind)


def test_chat_loss_masks_everything_but_the_assistant_turns(tiny_model_dir, tmp_path):
    _, tok = load_pretrained(tiny_model_dir)
    task = get_dataset("toy_chat").task
    messages = [{"role": "user", "content": "is the cup red ?"}, {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "and the hat ?"}, {"role": "assistant", "content": "no"}]  # fmt: skip
    # Without a chat template: the Tulu v2 fallback, EOS after each reply.
    [(ids, labels)] = encode_examples(tok, task, [{"messages": messages}], "default", 512)
    trained = [i for i, y in zip(ids, labels, strict=True) if y != IGNORE]
    assert tok.decode(trained) == tok.decode(tok("yes")["input_ids"] + [tok.eos_token_id] + tok("no")["input_ids"]
                                             + [tok.eos_token_id])  # fmt: skip
    assert tok.decode([i for i, y in zip(ids, labels, strict=True) if y == IGNORE]).count("<|user|>") == 2
    # With the tokenizer's own template: its end-of-turn marker is trained on too.
    tok.chat_template = (
        "{% for m in messages %}{{ '[' + m['role'] + ']' + m['content'] + '[end]' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '[assistant]' }}{% endif %}"
    )
    pieces = template_segments(tok, messages)
    assert [text for text, trained in pieces if trained] == ["yes[end]", "no[end]"]
    assert "".join(text for text, _ in pieces) == tok.apply_chat_template(messages, tokenize=False)
    [(_, labels2)] = encode_examples(tok, task, [{"messages": messages}], "default", 512)
    assert sum(y != IGNORE for y in labels2) == len(tok("yes[end]no[end]", add_special_tokens=False)["input_ids"])


def test_instruct_runs_on_the_toy_chat_mixture(tiny_model_dir, tmp_path):
    data = write_task(tmp_path, "toy_chat", 24)
    summary = finetune(tiny_model_dir, data, "toy_chat", cfg(), 1e-3, 0, tmp_path / "ft", tmp_path / "st", "instruct")
    log = pd.read_parquet(tmp_path / "ft" / "train_log.parquet")
    assert list(log["step"]) == [1, 2, 3] and summary["steps"] == 3
    assert (log["loss"] > 0).all() and (log["tokens"] > 0).all()


def test_packed_grouped_and_one_by_one_losses_agree(tiny_model_dir, nli_data):
    model, tok = load_pretrained(tiny_model_dir)
    model.eval()
    records = pd.read_parquet(nli_data).to_dict("records")[:6]
    examples = encode_examples(tok, get_dataset("toy_nli").task, records, "default", 256)
    assert len({len(x) for x, _ in examples}) > 1  # padding is really exercised
    with torch.no_grad():
        one_by_one = sum(completion_loss(model, collate_padded([e], tok.pad_token_id), False) for e in examples)
        padded = completion_loss(model, collate_padded(examples, tok.pad_token_id), False)
        packed = completion_loss(model, collate_packed(examples), True)
        padded_fast = completion_loss(model, collate_padded(examples, tok.pad_token_id), True)
    for loss in (padded, packed, padded_fast):
        torch.testing.assert_close(loss, one_by_one, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "untied gpt_neox"])
def test_packed_attention_is_per_example_and_exact(arch, tiny_model_dir, nli_data, monkeypatch):
    from ptft.finetune import packed_attention

    model, tok = load_pretrained(tiny_model_dir)
    if arch != "llama":
        model = _untied_neox()
    pad = model.config.pad_token_id or 0
    records = pd.read_parquet(nli_data).to_dict("records")[:5]
    examples = encode_examples(tok, get_dataset("toy_nli").task, records, "default", 256)
    examples = [([i % model.config.vocab_size for i in x], [-100 if t == -100 else t % model.config.vocab_size
                 for t in y]) for x, y in examples]  # fmt: skip
    padded = collate_padded(examples, pad)
    ref = completion_loss(model, padded, True)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    calls = []
    sdpa = packed_attention.F.scaled_dot_product_attention
    monkeypatch.setattr(packed_attention.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: calls.append(q.shape[2]) or sdpa(q, *a, **k))  # fmt: skip
    with packed_attention.use_packed_attention(model) as used:
        assert used and model.config._attn_implementation == packed_attention.NAME
        loss = completion_loss(model, collate_packed(examples), True)
        loss.backward()
        # Padded batches in the same model still get SDPA's masks (validation, probes).
        torch.testing.assert_close(completion_loss(model, padded, True), ref, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"
    lengths = [len(x) for x, _ in examples]
    # One causal SDPA per example and layer, each over that example's tokens only.
    assert calls[: len(lengths)] == lengths and len(calls) >= len(lengths) * model.config.num_hidden_layers
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def _untied_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, tie_word_embeddings=False, pad_token_id=0)  # fmt: skip
    return GPTNeoXForCausalLM(config)


@pytest.mark.parametrize("arch", ["tied llama, padding row", "untied gpt_neox"])
def test_kept_gradient_buffers_equal_autograd(arch, tiny_model_dir):
    model = load_pretrained(tiny_model_dir)[0] if arch.startswith("tied") else _untied_neox()
    pad = model.config.pad_token_id
    assert model.get_input_embeddings().padding_idx == (pad if arch.startswith("tied") else None)
    g = torch.Generator().manual_seed(0)

    def batch(lengths):
        return collate_padded([(ids := torch.randint(3, 60, (n,), generator=g).tolist(), [IGNORE] * (n - 2) + ids[-2:])
                               for n in lengths], pad)  # fmt: skip

    # Steps of different token ids: stale rows of one step must not leak into the next; the
    # third step has two micro-batches (accumulation into a live buffer).
    steps = [[batch((5, 9, 7))], [batch((6, 4))], [batch((8, 3)), batch((4, 4, 6))]]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    reference = []
    for micro in steps:
        for b in micro:
            completion_loss(model, b, True).backward()
        reference.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.zero_grad(set_to_none=True)
    kept = KeptGrads(model)
    assert kept.active
    buffer = None
    for micro, expected in zip(steps, reference, strict=True):
        for b in micro:
            completion_loss(model, b, True, kept).backward()
        kept.settle()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=1e-5, msg=name)
        buffer = buffer if buffer is not None else model.get_output_embeddings().weight.grad
        kept.zero_grad(list(model.parameters()))
        assert model.get_output_embeddings().weight.grad is buffer  # the same memory, every step
    # A step in which nothing writes a buffer leaves it zero, not stale.
    kept.settle()
    assert not model.get_input_embeddings().weight.grad.any()


def test_gradient_checkpointing_changes_memory_not_results(tiny_model_dir, nli_data, tmp_path):
    plain = finetune(tiny_model_dir, nli_data, "toy_nli", cfg(max_steps=3), 1e-2, 0, tmp_path / "a", tmp_path / "sa")
    ckpt = finetune(tiny_model_dir, nli_data, "toy_nli", cfg(max_steps=3, gradient_checkpointing=True), 1e-2, 0,
                    tmp_path / "b", tmp_path / "sb")  # fmt: skip
    assert ckpt["final_loss"] == pytest.approx(plain["final_loss"], abs=1e-5)
    a, b = weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_probes_are_logged_every_k_steps(tiny_model_dir, nli_data, tmp_path):
    probes = {"every": 2, "examples": 4, "path": None}
    summary = finetune(tiny_model_dir, nli_data, "toy_nli", cfg(probes=probes, max_steps=5), 1e-2, 0,
                       tmp_path / "ft", tmp_path / "st")  # fmt: skip
    assert summary["probe_time_s"] > 0
    df = pd.read_parquet(tmp_path / "ft" / "probes.parquet")
    assert list(df.columns) == ["step", "example", "response_type", "logp", "n_tokens"]
    assert sorted(df["step"].unique()) == [0, 2, 4, 5]
    assert set(df["response_type"]) == {"gold", "other_label", "other_response"}
    assert len(df) == 4 * 4 * 3 and (df["logp"] < 0).all() and (df["n_tokens"] >= 1).all()
    # At step 0 the logged value is the base model's summed log-probability of the response.
    model, tok = load_pretrained(tiny_model_dir)
    record = pd.read_parquet(nli_data).to_dict("records")[0]
    from ptft.data.prompts import completion, join_prompt_completion, render_prompt

    task = get_dataset("toy_nli").task
    prompt, response = join_prompt_completion(render_prompt(task, record, "default"), completion(task, record))
    p, r = tok(prompt, add_special_tokens=False)["input_ids"], tok(response, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1]
    direct = torch.log_softmax(logits, -1).gather(1, torch.tensor(r)[:, None]).sum()
    row = df[(df.step == 0) & (df.example == 0) & (df.response_type == "gold")].iloc[0]
    assert row["logp"] == pytest.approx(float(direct), abs=1e-4) and row["n_tokens"] == len(r)


def test_select_lr_picks_the_best_validation_run():
    runs = [{"checkpoint": "c", "task": "t", "method": "full", "seed": 0, "lr": lr, "model_dir": f"m{lr}",
             "validation": {"loss": loss, "score": score}}
            for lr, loss, score in [(1e-3, 0.9, 0.5), (1e-2, 0.4, 0.4), (1e-1, 0.4, 0.8)]]  # fmt: skip
    group = {"checkpoint": "step10", "task": "t", "method": "full", "seed": 0}
    by_loss = select_lr(runs, "loss", group)
    assert by_loss["lr"] == 1e-2 and by_loss["path"] == "m0.01"  # tie on loss: the smaller lr
    assert by_loss["checkpoint"] == "step10" and len(by_loss["candidates"]) == 3
    assert select_lr(runs, "score", group)["lr"] == 1e-1
    with pytest.raises(ValueError, match="not one grid"):
        select_lr(runs, "loss", {**group, "seed": 1})


def test_a_stop_signal_is_remembered_not_fatal():
    stop = signals.StopRequested()
    try:
        assert not stop
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop and stop.signum == signal.SIGUSR1
    finally:
        stop.restore()


def _finetune_cmd(model_dir, data, out, st, max_steps):
    import json

    config = cfg(max_steps=max_steps, save_every=5, epochs=100, lora=None, lpft=None)
    return [sys.executable, "-m", "ptft", "finetune", "--checkpoint", str(model_dir), "--train", str(data),
            "--task", "toy_nli", "--config", json.dumps(config), "--lr", "0.01", "--seed", "3",
            "--out-dir", str(out), "--state-dir", str(st), "--threads", "1"]  # fmt: skip


def _interrupt(cmd, st, sig, after_step):
    """Start a run, wait until its saved state is past ``after_step``, send ``sig``; its exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        path = st / "state.pt"
        if path.exists() and torch.load(path, weights_only=False)["step"] > after_step:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    rc = proc.wait(timeout=120)
    return rc, proc.stderr.read()


def test_killed_run_resumes_to_the_uninterrupted_weights(tiny_model_dir, nli_data, tmp_path):
    steps = 60
    # The uninterrupted run goes alongside the interrupted ones (each process is mostly start-up).
    uninterrupted = subprocess.Popen(_finetune_cmd(tiny_model_dir, nli_data, tmp_path / "a", tmp_path / "sa", steps),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip

    cmd = _finetune_cmd(tiny_model_dir, nli_data, tmp_path / "b", tmp_path / "sb", steps)
    rc, _ = _interrupt(cmd, tmp_path / "sb", signal.SIGKILL, 10)
    assert rc == -signal.SIGKILL and not (tmp_path / "b" / "model").exists()
    # SIGTERM (SLURM's preemption notice): the run saves the state of the step it is in and exits 143.
    rc, err = _interrupt(cmd, tmp_path / "sb", signal.SIGTERM, 25)
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert "resuming at step" in err and "received SIGTERM" in err
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at step" in done.stderr

    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-2000:]
    a, b = weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    log_a = pd.read_parquet(tmp_path / "a" / "train_log.parquet")
    log_b = pd.read_parquet(tmp_path / "b" / "train_log.parquet")
    assert list(log_b["step"]) == list(range(1, steps + 1))
    pd.testing.assert_series_equal(log_a["loss"], log_b["loss"], atol=1e-6, rtol=0)
    assert not (tmp_path / "sb" / "state.pt").exists()  # cleaned up after the final save


def test_lr_schedule_warms_up_from_the_first_step_and_decays_to_zero():
    from ptft.finetune.optim import linear, warmup_steps

    ratio = [warmup_steps(80, {"warmup_ratio": 0.03}), warmup_steps(3, {"warmup_ratio": 0.03}),
             warmup_steps(250, {"warmup_ratio": 0.1})]  # fmt: skip
    assert ratio == [2, 1, 25]
    # 10 steps, 2 of warmup: the first step trains at half the peak, the last at a tenth... of 8.
    assert [linear(s, 10, 2) for s in range(10)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    )
