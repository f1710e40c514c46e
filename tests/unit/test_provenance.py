"""Provenance: what every Parquet table and saved model records of what made it, and ``ptft provenance``."""

import json
import subprocess

import pandas as pd
import pytest

import ptft
from ptft import io, provenance
from ptft.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"
POINTER = {"name": "step1000", "model": "org/tiny", "revision": "step1000", "commit": COMMIT, "step": 1000}
HUB_RECORD = {"name": "step1000", "model": "org/tiny", "revision": "step1000", "commit": COMMIT}


def write_pointer(folder, pointer=POINTER):
    path = folder / f"{pointer['name']}.json"
    io.write_json(path, pointer)
    return path


# --- Parquet tables ----------------------------------------------------------------------------


def test_a_parquet_table_records_version_commit_config_and_what_the_caller_gives(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.CONFIG_ENV, "c0ffee")
    df = pd.DataFrame({"a": [1, None], "b": [True, None], "c": ["x", "y"]}).astype({"a": "Int64", "b": "boolean"})
    io.write_parquet(tmp_path / "t.parquet", df, {"checkpoints": [HUB_RECORD]})

    record = provenance.read(tmp_path / "t.parquet")
    assert record["ptft_version"] == ptft.__version__
    assert record["config_sha256"] == "c0ffee"
    assert record["checkpoints"] == [HUB_RECORD]
    assert {"git_commit", "git_dirty"} <= set(record)
    # The table itself is unchanged, nullable dtypes included.
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)


def test_without_the_workflow_the_config_hash_is_null(tmp_path, monkeypatch):
    monkeypatch.delenv(provenance.CONFIG_ENV, raising=False)
    io.write_parquet(tmp_path / "t.parquet", pd.DataFrame({"a": [1]}))
    assert provenance.read(tmp_path / "t.parquet")["config_sha256"] is None


def test_the_source_commit_is_this_checkouts_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.Path(provenance.__file__).parent,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert provenance.source_commit()["git_commit"] == head
    assert isinstance(provenance.source_commit()["git_dirty"], bool)


def test_without_git_the_commit_is_null_not_an_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert provenance.source_commit.__wrapped__() == {"git_commit": None, "git_dirty": None}


def test_the_config_hash_ignores_key_order():
    a = {"study": "s", "finetune": {"lrs": [0.1], "epochs": 1}}
    b = {"finetune": {"epochs": 1, "lrs": [0.1]}, "study": "s"}
    assert provenance.config_sha256(a) == provenance.config_sha256(b) != provenance.config_sha256({"study": "t"})


# --- checkpoints behind a model ----------------------------------------------------------------


def test_the_checkpoints_behind_each_kind_of_model_path(tmp_path):
    pointer = write_pointer(tmp_path)
    local = write_pointer(tmp_path, {"name": "mine", "path": "/models/mine"})
    toy = tmp_path / "step12"
    toy.mkdir()
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    io.write_provenance(run / "model", provenance.for_model(pointer))
    io.write_json(run / "summary.json", {"checkpoint": str(pointer), "model_dir": str(run / "model")})
    selection = tmp_path / "seed0.json"
    io.write_json(selection, {"selected": True, "lr": 0.01, "path": str(run / "model")})

    assert provenance.checkpoints_of(pointer) == [HUB_RECORD]
    assert provenance.checkpoints_of(local) == [{"name": "mine", "path": "/models/mine"}]
    assert provenance.checkpoints_of(toy) == [{"name": "step12", "path": str(toy)}]
    assert provenance.checkpoints_of(run / "model") == [HUB_RECORD]
    assert provenance.checkpoints_of(selection) == [HUB_RECORD]
    assert provenance.read(run / "summary.json") == {"checkpoints": [HUB_RECORD]}


def test_a_fine_tuned_model_saved_without_a_record_is_traced_through_its_summary(tmp_path):
    pointer = write_pointer(tmp_path)
    (tmp_path / "run" / "model").mkdir(parents=True)
    io.write_json(tmp_path / "run" / "summary.json", {"checkpoint": str(pointer), "model_dir": "elsewhere"})
    assert provenance.checkpoints_of(tmp_path / "run" / "model") == [HUB_RECORD]


# --- tables built from tables ------------------------------------------------------------------


def predictions(tmp_path, name, checkpoints, config="c1"):
    path = tmp_path / f"{name}.parquet"
    record = {"checkpoints": checkpoints, "config_sha256": config}
    io.write_parquet(path, pd.DataFrame({"score": [1.0]}), record)
    return path


def test_a_table_from_tables_has_the_union_of_their_checkpoints_and_their_builds(tmp_path):
    other = {**HUB_RECORD, "name": "step2000", "revision": "step2000", "commit": "f" * 40}
    paths = [
        predictions(tmp_path, "a", [HUB_RECORD]),
        predictions(tmp_path, "b", [HUB_RECORD]),
        predictions(tmp_path, "c", [other], config="c2"),
    ]
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "bare.parquet")

    origin = provenance.of_inputs([*paths, tmp_path / "bare.parquet"])

    assert origin["checkpoints"] == [HUB_RECORD, other]
    assert sorted(b["config_sha256"] for b in origin["inputs"]) == ["c1", "c2"]
    assert origin["inputs_without_provenance"] == 1


def test_the_performance_table_names_the_commits_of_its_rows_checkpoints(tmp_path, monkeypatch):
    from test_aggregate import MANIFEST, make_predictions

    monkeypatch.setenv(provenance.CONFIG_ENV, "c0ffee")
    preds = make_predictions()
    files = []
    for i, (_, rows) in enumerate(preds.groupby("model")):
        ckpt = rows["checkpoint"].iloc[0]
        files.append(tmp_path / f"p{i}.parquet")
        io.write_parquet(files[-1], rows, {"checkpoints": [{"name": ckpt, "path": f"x/{ckpt}"}]})
    manifest = {"suite": "toy", "checkpoints": [*MANIFEST["checkpoints"], {"name": "unused", "path": "x/unused"}]}
    io.write_json(tmp_path / "manifest.json", manifest)
    config = json.dumps({"bootstrap": {"resamples": 50, "confidence": 0.95, "seed": 0}})

    main(["performance", "--predictions", *map(str, files), "--manifest", str(tmp_path / "manifest.json"),
          "--study", "toy", "--config", config, "--out", str(tmp_path / "performance.parquet")])  # fmt: skip

    record = provenance.read(tmp_path / "performance.parquet")
    assert record["checkpoints"] == [{"name": "step20", "path": "x/step20"}, {"name": "step40", "path": "x/step40"}]
    assert record["config_sha256"] == "c0ffee" and record["inputs"][0]["config_sha256"] == "c0ffee"


def test_an_analysis_table_inherits_the_performance_tables_checkpoints(tmp_path, monkeypatch):
    from ptft.analysis import registry

    io.write_parquet(tmp_path / "performance.parquet", pd.DataFrame({"value": [1.0, 3.0]}),
                     {"checkpoints": [HUB_RECORD]})  # fmt: skip
    mean = registry.Table("mean", "", lambda perf, _settings: perf.mean().to_frame("value"))
    monkeypatch.setitem(registry.ANALYSES, "mean", registry.Analysis("mean", "Test", tables=(mean,)))

    out = tmp_path / "tables" / "mean.parquet"
    registry.run_analysis("mean", {"performance": [str(tmp_path / "performance.parquet")]}, {}, {}, [str(out)], [])

    assert pd.read_parquet(out)["value"].tolist() == [2.0]
    assert provenance.read(out)["checkpoints"] == [HUB_RECORD]


# --- the command -------------------------------------------------------------------------------


def test_ptft_provenance_prints_each_files_record(tmp_path, capsys):
    table = predictions(tmp_path, "a", [HUB_RECORD])
    pointer = write_pointer(tmp_path)

    main(["provenance", str(table), str(pointer)])

    printed = json.loads(capsys.readouterr().out)
    assert printed[str(table)]["checkpoints"] == [HUB_RECORD]
    assert printed[str(pointer)] == {"checkpoints": [HUB_RECORD]}


def test_ptft_provenance_names_a_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="no such file: .*nope.parquet"):
        main(["provenance", str(tmp_path / "nope.parquet")])


# --- saved models ------------------------------------------------------------------------------


def lora_model(tiny_model_dir):
    from ptft.checkpoints.load import load_pretrained
    from ptft.finetune.methods.lora import apply_lora

    model, tok = load_pretrained(tiny_model_dir)
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear", "save": "adapter"}
    return apply_lora(model, lora), tok, {"lora": lora}


def test_a_lora_adapter_records_the_commit_of_its_hub_base(tiny_model_dir, tmp_path):
    from peft import PeftConfig

    from ptft.finetune.methods import get_method

    model, tok, cfg = lora_model(tiny_model_dir)
    pointer = write_pointer(tmp_path)
    get_method("lora").save(tmp_path / "adapter", model, tok, cfg, pointer)

    config = PeftConfig.from_pretrained(str(tmp_path / "adapter"))
    assert (config.base_model_name_or_path, config.revision) == ("org/tiny", COMMIT)
    adapter = io.read_json(tmp_path / "adapter" / "ptft_adapter.json")
    assert adapter == {"base_checkpoint": str(pointer), "base_model": "org/tiny", "base_revision": COMMIT}
    assert provenance.read(tmp_path / "adapter")["checkpoints"] == [HUB_RECORD]


def test_a_lora_adapter_of_a_local_folder_names_the_folder(tiny_model_dir, tmp_path):
    from peft import PeftConfig

    from ptft.finetune.methods import get_method

    model, tok, cfg = lora_model(tiny_model_dir)
    get_method("lora").save(tmp_path / "adapter", model, tok, cfg, tiny_model_dir)

    config = PeftConfig.from_pretrained(str(tmp_path / "adapter"))
    assert (config.base_model_name_or_path, config.revision) == (str(tiny_model_dir), None)


def test_a_fine_tuned_model_records_its_checkpoint(tiny_model_dir, tmp_path):
    from ptft.checkpoints.load import load_pretrained
    from ptft.finetune.methods import get_method

    model, tok = load_pretrained(tiny_model_dir)
    get_method("full").save(tmp_path / "model", model, tok, {}, tiny_model_dir)
    record = provenance.read(tmp_path / "model")
    assert record["checkpoints"] == [{"name": tiny_model_dir.name, "path": str(tiny_model_dir)}]
    assert record["ptft_version"] == ptft.__version__


CHAT = [
    {"role": "system", "content": "Be brief. "},
    {"role": "user", "content": " Is water wet?\n"},
    {"role": "assistant", "content": "Yes.  "},
    {"role": "user", "content": "And ice?"},
]
REPLY = {"role": "assistant", "content": "Also yes."}


def training_text(tok, messages):
    """The transcript as instruction tuning formats it: its pieces, EOS after each trained one."""
    from ptft.data.registry import get_dataset
    from ptft.finetune.batching import segments

    pieces, add_eos = segments(get_dataset("toy_chat").task, {"messages": messages}, "default", tok)
    return [text + (tok.eos_token if trained and add_eos else "") for text, trained in pieces]


def test_an_instruction_tuned_tokenizer_is_saved_with_the_template_it_was_trained_on(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from ptft.checkpoints.load import load_pretrained
    from ptft.finetune.methods import get_method

    model, tok = load_pretrained(tiny_model_dir)
    assert not tok.chat_template
    trained = training_text(tok, [*CHAT, REPLY])
    get_method("instruct").save(tmp_path / "model", model, tok, {}, tiny_model_dir)

    saved = AutoTokenizer.from_pretrained(tmp_path / "model")
    # The prompt for the next reply is the training text up to that reply; the transcript is all of it.
    assert saved.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == "".join(trained[:-2])
    assert saved.apply_chat_template([*CHAT, REPLY], tokenize=False) == "".join(trained)
    assert not tok.chat_template  # the live tokenizer is left as it was


def test_a_tokenizer_with_its_own_template_keeps_it(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from ptft.checkpoints.load import load_pretrained
    from ptft.finetune.methods import get_method

    model, tok = load_pretrained(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    get_method("instruct").save(tmp_path / "model", model, tok, {}, tiny_model_dir)
    assert AutoTokenizer.from_pretrained(tmp_path / "model").chat_template == tok.chat_template
