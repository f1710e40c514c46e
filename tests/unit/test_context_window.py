"""A max_length or prompt longer than the model's context window: cut to it, never an IndexError."""

import logging
import sys
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer, GPT2Config, LlamaConfig

from ptft.data.convert import to_canonical
from ptft.data.prompts import few_shot_prompt
from ptft.data.registry import get_dataset
from ptft.evaluate.scoring import score_items
from ptft.finetune.train import context_window, finetune
from ptft.toy.generate import generate_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.tiny_models import tiny_gpt2  # noqa: E402

WINDOW = 36  # toy_summary examples are 33 to 42 tokens long: some fit, some do not
CFG = {"epochs": 1, "batch_size": 4, "grad_accum": 1, "warmup_ratio": 0.1, "weight_decay": 0.0, "max_length": 256,
       "max_steps": 3, "format": "default", "save_every": 1000, "precision": "fp32", "batching": "packed",
       "gradient_checkpointing": False, "max_grad_norm": 1.0, "peak_tflops": None, "probes": None}  # fmt: skip


@pytest.fixture(scope="module")
def gpt2_dir(tiny_model_dir, tmp_path_factory):
    """GPT-2 (absolute positions, ``n_positions`` = WINDOW) with the toy tokenizer, in the hub's layout."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path_factory.mktemp("gpt2")
    tiny_gpt2(len(tok), WINDOW).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def records(name: str, n: int) -> list[dict]:
    spec = get_dataset(name)
    raw = generate_splits(spec, {"train": n}, 0)["train"]
    return to_canonical(spec, "train", raw, range(len(raw)))


def test_the_context_window_is_read_whatever_the_config_calls_it():
    assert context_window(GPT2Config(n_positions=32)) == 32
    assert context_window(LlamaConfig(max_position_embeddings=128)) == 128

    class Config:
        n_ctx = 64

    assert context_window(Config()) == 64
    assert context_window(object()) is None


def test_max_length_beyond_the_window_is_capped_with_a_warning(gpt2_dir, tmp_path, caplog):
    pd.DataFrame(records("toy_summary", 24)).to_parquet(tmp_path / "train.parquet")
    with caplog.at_level(logging.WARNING):
        summary = finetune(gpt2_dir, tmp_path / "train.parquet", "toy_summary", CFG, 1e-3, 0, tmp_path / "ft",
                           tmp_path / "st")  # fmt: skip
    assert f"finetune.max_length=256 exceeds the context window of {gpt2_dir} ({WINDOW} positions)" in caplog.text
    assert summary["config"]["max_length"] == WINDOW and summary["steps"] == 3
    assert CFG["max_length"] == 256  # the caller's config is not changed


@pytest.mark.parametrize("name", ["toy_nli", "toy_summary"])
def test_prompts_are_cut_to_a_gpt2_window(gpt2_dir, name):
    from ptft.checkpoints.load import load_pretrained

    model, tok = load_pretrained(gpt2_dir)
    task = get_dataset(name).task
    items = [{**r, "idx": i} for i, r in enumerate(records(name, 6))]
    prompts = [few_shot_prompt(task, items[:3], item, "default") for item in items[3:]]  # 3 shots: too long
    cfg = {"batch_size": 2, "max_new_tokens": {"classification": 3, "generation": 4}, "stop": "\n",
           "rouge_stemmer": False}  # fmt: skip
    result = score_items(model.eval(), tok, task, items[3:], prompts, cfg)[0]
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    reserve = cfg["max_new_tokens"]["generation"] if task.kind == "generation" else 0
    assert min(lengths) > WINDOW
    # Whole shots go first (test_truncation.py), so a prompt may keep fewer tokens than fit.
    assert all(0 < n - cut <= WINDOW - reserve for n, cut in zip(lengths, result["truncated_tokens"], strict=True))


def test_probes_longer_than_the_window_are_cut_not_an_index_error(gpt2_dir, tmp_path, caplog):
    pd.DataFrame(records("toy_summary", 24)).to_parquet(tmp_path / "train.parquet")
    cfg = {**CFG, "probes": {"every": 2, "examples": 8, "path": None}}
    with caplog.at_level(logging.WARNING):
        finetune(gpt2_dir, tmp_path / "train.parquet", "toy_summary", cfg, 1e-3, 0, tmp_path / "ft", tmp_path / "st")
    assert f"probe rows are longer than the context window ({WINDOW} tokens)" in caplog.text
    probes = pd.read_parquet(tmp_path / "ft" / "probes.parquet")
    assert len(probes) > 0 and probes["logp"].notna().all() and (probes["n_tokens"] > 0).all()


def test_a_probe_set_line_that_is_not_utf8_is_named(tmp_path):
    from ptft.finetune.probes import read_probe_set

    path = tmp_path / "probes.jsonl"
    path.write_bytes(b'{"example": 0, "prompt": "a", "response_type": "gold", "response": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=f"finetune.probes.path {path} line 1: not UTF-8 text"):
        read_probe_set(path)
