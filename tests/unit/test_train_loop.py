"""The training loop: a stop signal saves the state and raises; the resumed loop ends as an uninterrupted one."""

import json
import os
import signal

import pandas as pd
import pytest
import torch

from ptft import signals
from ptft.checkpoints.load import load_pretrained
from ptft.data.convert import to_canonical
from ptft.data.registry import get_dataset
from ptft.finetune import state
from ptft.finetune.batching import IGNORE
from ptft.finetune.train import finetune, train_loop
from ptft.toy.generate import generate_splits

CFG = {"epochs": 1, "batch_size": 4, "grad_accum": 2, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_steps": 6,
       "save_every": 100, "precision": "fp32", "batching": "grouped", "max_grad_norm": 1.0}  # fmt: skip
SUMMARY_KEYS = {
    "checkpoint", "task", "method", "lr", "seed", "model_dir", "examples", "examples_without_targets", "steps",
    "batching", "head_on_targets_only", "total_tokens", "wall_time_s", "tokens_per_s", "probe_time_s", "n_parameters",
    "n_trainable_parameters", "peak_flops", "mfu", "peak_memory_bytes", "final_loss", "validation", "diverged",
    "config", "provenance", "snapshot_time_s", "ft_step", "snapshots", "selected_step", "processes",
}  # fmt: skip


def examples(vocab: int, n: int = 64) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for length in torch.randint(6, 20, (n,), generator=g).tolist():
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append((ids, [IGNORE] * (length - 2) + ids[-2:]))
    return out


class Prober:
    """Logs one row per step; sends this process SIGUSR1 while probing ``signal_at``."""

    def __init__(self, signal_at: int | None = None):
        self.signal_at = signal_at

    def due(self, step, total_steps):
        return True

    def rows(self, model, step):
        if step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        return [{"step": step}]


def test_a_stop_signal_saves_and_raises_and_the_resumed_loop_ends_as_an_uninterrupted_one(tiny_model_dir, tmp_path):
    model, tok = load_pretrained(tiny_model_dir)
    data, path = examples(model.config.vocab_size), tmp_path / "state.pt"
    torch.manual_seed(1)
    plain = train_loop(model, data, CFG, 1e-2, 0, tok.pad_token_id, progress=state.Progress(method_stats={"x": 1.0}),
                       prober=Prober())  # fmt: skip
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    handler = signal.getsignal(signal.SIGUSR1)
    halted, _ = load_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with pytest.raises(signals.Interrupted) as stopped:
        train_loop(halted, data, CFG, 1e-2, 0, tok.pad_token_id, path, state.Progress(method_stats={"x": 1.0}),
                   Prober(signal_at=3))  # fmt: skip
    assert stopped.value.signum == signal.SIGUSR1 and signal.getsignal(signal.SIGUSR1) is handler
    saved = torch.load(path, weights_only=False)
    assert saved["step"] == 3 and [r["step"] for r in saved["progress"]["log"]] == [1, 2, 3]
    assert saved["progress"]["probes"] == [{"step": s} for s in range(4)] and saved["progress"]["wall_time_s"] > 0

    model, _ = load_pretrained(tiny_model_dir)
    torch.manual_seed(2)  # the saved RNG state, not this one, drives the rest
    resumed = train_loop(model, data, CFG, 1e-2, 0, tok.pad_token_id, path, state.Progress(), Prober())
    assert resumed.progress.method_stats == {"x": 1.0}  # kept from before the interruption
    assert resumed.progress.probes == plain.progress.probes == [{"step": s} for s in range(7)]
    assert resumed.progress.probe_time_s > 0 and resumed.steps == plain.steps == 6
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in plain.progress.log]
    assert [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in resumed.progress.log] == strip
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=1e-6, rtol=0, msg=k)

    # Resumed in the stopping process, on the model it stopped (the gradients it held must not count)
    again = train_loop(halted, data, CFG, 1e-2, 0, tok.pad_token_id, path, state.Progress(), Prober())
    assert [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in again.progress.log] == strip
    for k, v in halted.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=1e-6, rtol=0, msg=k)


def test_the_summary_records_the_run_and_scores_with_the_given_evaluation_settings(
    tiny_model_dir, tmp_path, monkeypatch
):
    from ptft.evaluate import scoring

    spec = get_dataset("toy_nli")
    raw = generate_splits(spec, {"train": 24}, 0)["train"]
    pd.DataFrame(to_canonical(spec, "train", raw, range(len(raw)))).to_parquet(tmp_path / "train.parquet")
    settings = {"batch_size": 5, "max_new_tokens": {"classification": 3, "generation": 7}, "stop": "\n",
                "rouge_stemmer": False}  # fmt: skip
    seen = []
    real = scoring.score_items
    monkeypatch.setattr(scoring, "score_items", lambda *a: seen.append(a[-1]) or real(*a))
    cfg = {**CFG, "max_steps": 2, "max_length": 256, "format": "default", "gradient_checkpointing": False,
           "peak_tflops": 1.0, "probes": None, "validation_score": settings}  # fmt: skip

    summary = finetune(tiny_model_dir, tmp_path / "train.parquet", "toy_nli", cfg, 1e-3, 0, tmp_path / "ft",
                       tmp_path / "st", "full", tmp_path / "train.parquet")  # fmt: skip
    assert set(summary) == SUMMARY_KEYS and seen == [settings]
    assert set(summary["validation"]) == {"loss", "score"} and summary["steps"] == 2 and summary["mfu"] > 0
    assert set(json.loads((tmp_path / "ft" / "summary.json").read_text())) == SUMMARY_KEYS
    assert not (tmp_path / "st" / "state.pt").exists()

    with pytest.raises(ValueError, match="validation_score: expected the evaluation settings"):
        finetune(tiny_model_dir, tmp_path / "train.parquet", "toy_nli", {**cfg, "validation_score": True}, 1e-3, 0,
                 tmp_path / "ft2", tmp_path / "st2", "full", tmp_path / "train.parquet")  # fmt: skip


def test_the_shortcut_check_runs_on_the_last_tokens_of_each_example(tiny_model_dir, monkeypatch):
    """check_shortcuts: an example is cut to its last CHECK_TOKENS tokens, or kept whole where its only
    target lies before them; the shortcuts hold on a model whose logits are lm_head(hidden states)."""
    from ptft.finetune import train

    model, tok = load_pretrained(tiny_model_dir)
    n, cut = 300, train.CHECK_TOKENS
    ids = torch.randint(3, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    late = (ids, [IGNORE] * (n - 3) + ids[-3:])  # its targets at the end: cut
    early = (ids, [IGNORE, ids[1]] + [IGNORE] * (n - 2))  # its one target before the last 128 tokens: whole
    widths, real = [], train.completion_loss
    monkeypatch.setattr(
        train, "completion_loss", lambda m, b, *a, **k: widths.append(b["input_ids"].shape[-1]) or real(m, b, *a, **k)
    )
    cpu = torch.device("cpu")
    assert train.check_shortcuts(model, [late, late], "packed", tok.pad_token_id, cpu) == ("packed", True)
    assert widths == [cut, cut, 2 * cut]  # padded, padded on targets only, one packed row
    widths.clear()
    assert train.check_shortcuts(model, [late, early], "packed", tok.pad_token_id, cpu) == ("packed", True)
    assert widths == [n, n, cut + n]
