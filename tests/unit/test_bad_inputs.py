"""Bad input is refused with a message naming the file, dataset, record or key and what to do
(issue 22): incomplete or damaged checkpoint folders, hub ids, undecodable data lines, duplicate
and unsafe names, few-shot pools smaller than the shots, and schema errors."""

import copy
import json
import logging
import shutil

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from helpers.fake_hub import write_model_repo
from helpers.hub_fixtures import write_hub_dataset
from ptft.checkpoints.hub import hub_suite
from ptft.checkpoints.load import fetch_checkpoint, load_pretrained
from ptft.config import ConfigError, validate_study
from ptft.data.convert import DataError
from ptft.data.prepare import eval_and_fewshot, load_raw_split
from ptft.data.registry import get_dataset
from ptft.plan import build_plan


@pytest.fixture
def config():
    return validate_study(yaml.safe_load((ROOT / "config.yaml").read_text()))


def copy_without(src, dst, *names):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return dst


# --- checkpoint folders -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "leave_out, needle",
    [
        (("tokenizer.json", "tokenizer_config.json"), "no tokenizer files"),
        (("model.safetensors",), r"no weights \(model.safetensors"),
        (("config.json",), "no config.json"),
    ],
)
def test_an_incomplete_local_checkpoint_folder_is_refused(tiny_model_dir, tmp_path, leave_out, needle):
    folder = copy_without(tiny_model_dir, tmp_path / "ck", *leave_out)
    entry = {"name": "step7", "step": 7, "tokens": None, "path": str(folder)}
    with pytest.raises(FileNotFoundError, match=rf"checkpoint 'step7' \(checkpoints.local\): {folder} has {needle}"):
        fetch_checkpoint(entry)
    with pytest.raises(FileNotFoundError, match=needle):
        load_pretrained(folder)


def test_a_folder_without_tokenizer_is_not_loaded_as_an_empty_tokenizer(tmp_path):
    """transformers builds a 2-token tokenizer for a GPT-NeoX folder without tokenizer files; training on it
    gives a NaN loss and exit code 0."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2)  # fmt: skip
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'neox'} has no tokenizer files"):
        load_pretrained(tmp_path / "neox")


def test_a_tokenizer_without_vocabulary_is_refused(tiny_model_dir, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder = copy_without(tiny_model_dir, tmp_path / "ck", "tokenizer_config.json")
    Tokenizer(WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")).save(str(folder / "tokenizer.json"))
    with pytest.raises(ValueError, match=f"checkpoint folder {folder}: its tokenizer has 2 tokens, no vocabulary"):
        load_pretrained(folder)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_safetensors_file_is_named(tiny_model_dir, tmp_path, keep):
    folder = copy_without(tiny_model_dir, tmp_path / "ck")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        ValueError, match=rf"^{weights}: the weights cannot be read \(SafetensorError: .*re-run the job"
    ):
        load_pretrained(folder)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, tiny_model_dir):
    hf_home = tmp_path / "hf"
    write_model_repo(hf_home, "org/tiny", {"main": tiny_model_dir, "step4": tiny_model_dir})
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return hf_home


@pytest.mark.parametrize("model", ["org/tiny", "org/tiny@step4"])
def test_a_hub_id_is_loaded_from_the_cache(hf_cache, model):
    from ptft.derive.hf_backend import HFBackend

    backend = HFBackend(model, device="cpu")
    assert backend._lm.config.num_hidden_layers == 2 and len(backend._tok) > 100


def test_an_unknown_source_is_named(hf_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"hub model org/absent@main: cannot be loaded .*ptft download"):
        load_pretrained("org/absent")
    missing = tmp_path / "results/s/checkpoints/step4"
    with pytest.raises(FileNotFoundError, match=f"{missing}: not a checkpoint folder, a pointer file"):
        load_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="no such checkpoint pointer"):
        load_pretrained(tmp_path / "step4.json")
    with pytest.raises(FileNotFoundError, match=rf"checkpoint 'x' \(checkpoints.local\): no folder {missing}"):
        fetch_checkpoint({"name": "x", "path": str(missing)})


def test_ptft_download_checks_local_folders_first(tiny_model_dir, tmp_path, config):
    from ptft.download import download_study

    bad = copy_without(tiny_model_dir, tmp_path / "bad", "tokenizer.json")
    config["checkpoints"] = {"suite": "local", "local": [{"name": "good", "path": str(tiny_model_dir)},
                                                         {"name": "bad", "path": str(bad)}]}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(FileNotFoundError, match=f"checkpoint 'bad' \\(checkpoints.local\\): {bad} has no tokenizer"):
        download_study(tmp_path / "s.yaml", tmp_path / "results")
    assert not (tmp_path / "results").exists()


# --- data files ---------------------------------------------------------------------------------


@pytest.fixture
def rte_jsonl(tmp_path):
    """RTE in JSON lines; line 4 of validation.jsonl holds a Latin-1 byte, line 6 is cut short."""
    parquet = write_hub_dataset("glue_rte", tmp_path / "parquet", rows=8, splits=["train", "validation"])
    folder = tmp_path / "rte"
    folder.mkdir()
    for split in ("train", "validation"):
        pd.read_parquet(parquet / f"{split}.parquet").to_json(folder / f"{split}.jsonl", orient="records", lines=True)
    path = folder / "validation.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"sentence1":"', b'"sentence1":"caf\xe9 ')
    path.write_bytes(b"".join(lines))
    return folder


def test_a_line_that_is_not_utf8_is_named(rte_jsonl):
    path = rte_jsonl / "validation.jsonl"
    with pytest.raises(DataError, match=rf"dataset 'rte' split 'validation': {path} line 4: not UTF-8 text "
                                        r"\(byte 0xe9 .*data.invalid_records: skip"):  # fmt: skip
        load_raw_split(get_dataset("rte"), "validation", rte_jsonl)


def test_lines_that_are_not_utf8_or_json_are_skipped_and_counted(rte_jsonl, caplog):
    path = rte_jsonl / "validation.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:5] + [lines[5][:20] + b"\n"] + lines[6:]))
    with pytest.raises(DataError, match="line 4: not UTF-8"):
        eval_and_fewshot(get_dataset("rte"), rte_jsonl, None, 2, seed=0)
    with caplog.at_level(logging.WARNING, logger="ptft.data.prepare"):
        scored, pool = eval_and_fewshot(get_dataset("rte"), rte_jsonl, None, 2, seed=0, skip_invalid=True)
    assert len(scored) == 6 and len(pool) == 2
    assert "dataset rte split validation: skipping 2 bad lines of" in caplog.text


def test_a_line_that_is_not_json_is_named(rte_jsonl):
    path = rte_jsonl / "train.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [b'{"sentence1": "x",\n'] + lines[2:]))
    with pytest.raises(DataError, match=rf"dataset 'rte' split 'train': {path} line 3: not a JSON record"):
        load_raw_split(get_dataset("rte"), "train", rte_jsonl)


def test_ptft_download_reads_lines_as_the_study_says(rte_jsonl, tmp_path):
    from ptft.download import download_dataset

    data_dir = rte_jsonl.parent
    with pytest.raises(DataError, match="line 4: not UTF-8"):
        download_dataset("rte", str(data_dir), tmp_path / "rte.json")
    record = download_dataset("rte", str(data_dir), tmp_path / "rte.json", skip_invalid=True)
    assert record["splits"]["validation"]["rows"] == 7


def test_a_small_fewshot_split_is_named_when_prepared(rte_jsonl, caplog):
    with caplog.at_level(logging.WARNING, logger="ptft.data.prepare"):
        eval_and_fewshot(get_dataset("rte"), rte_jsonl, None, 50, seed=0, skip_invalid=True)
    assert "eval set rte: few-shot pool of 8 examples, not data.fewshot_pool_size 50 (split 'train' of" in caplog.text


# --- names and sizes at plan time ---------------------------------------------------------------


def local_suite(tmp_path, *names):
    return {"suite": "local", "local": [{"name": n, "path": str(tmp_path / f"ck{i}")} for i, n in enumerate(names)]}


def test_two_local_checkpoints_with_one_name_are_refused(config, tmp_path):
    config["checkpoints"] = local_suite(tmp_path, "a", "b", "a")
    with pytest.raises(ValueError, match=rf"checkpoints.local\[2\].name: 'a' is also the name of checkpoints.local"
                                         rf"\[0\] \(paths {tmp_path / 'ck0'} and {tmp_path / 'ck2'}\)"):  # fmt: skip
        build_plan(config, tmp_path)


def test_two_hub_revisions_of_one_step_are_refused(tmp_path):
    hub = {"model": "org/m", "revisions": ["step1000", "step1000-tokens4B"]}
    both = "duplicate checkpoint 'step1000', from revision 'step1000' and revision 'step1000-tokens4B'"
    with pytest.raises(ValueError, match=both):
        hub_suite(hub, tmp_path / "suite.json")


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c, t: c.update(study=".."), "study"),
        (lambda c, t: c.update(study="a/b"), "study"),
        (lambda c, t: c.update(checkpoints=local_suite(t, "a", "..")), r"checkpoints.local\[1\].name"),
        (lambda c, t: c.update(checkpoints=local_suite(t, ".")), r"checkpoints.local\[0\].name"),
        (lambda c, t: c.update(checkpoints=local_suite(t, "x/../../y")), r"checkpoints.local\[0\].name"),
        (
            lambda c, t: c.update(checkpoints={"suite": "hub", "hub": {"model": "org/m", "revisions": [".."]}}),
            r"checkpoints.hub.revisions \(revision '..'\)",
        ),
    ],
)
def test_names_that_would_leave_their_folder_are_refused(config, tmp_path, edit, key):
    edit(config, tmp_path)
    with pytest.raises(ValueError, match=rf"^{key}: '.*' cannot name a folder of the results"):
        build_plan(config, tmp_path)
    assert not (tmp_path.parent / "checkpoints").exists()


@pytest.mark.parametrize("key", ["shots", "finetuned_shots"])
def test_more_shots_than_the_fewshot_pool_is_refused_at_plan_time(config, key):
    config["evaluate"][key] = 8
    config["data"]["fewshot_pool_size"] = 5
    with pytest.raises(ValueError, match=rf"evaluate.{key}: 8 in-context examples, but data.fewshot_pool_size is 5.*"
                                         r"\(toy_nli, toy_nli_ood, .*\); raise data.fewshot_pool_size"):  # fmt: skip
        build_plan(config)


# --- the schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["finetune"].update(epochs="three"), "finetune.epochs: 'three' is not of type 'number'"),
        (lambda c: c["evaluate"].update(formats="x" * 5000), r"evaluate.formats: 'x{59}\.\.\. is not of type"),
        (lambda c: c.update(study=".."), r"study: '..' does not match"),
        (lambda c: c["checkpoints"].update(local=[{"name": "a"}]), r"checkpoints.local\[0\]: 'path' is a required"),
        (lambda c: c["data"].update(invalid_records="ignore"), r"data.invalid_records: 'ignore' is not one of"),
        (lambda c: c["evaluate"].update(generation_batch_size="big"), r"evaluate.generation_batch_size: 'big' is not"),
        (lambda c: c["evaluate"].update(decoder="fast"), r"evaluate.decoder: 'fast' is not one of"),
    ],
)
def test_a_schema_error_is_one_short_line_naming_the_key(edit, key):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    edit(raw)
    with pytest.raises(ConfigError) as e:
        validate_study(copy.deepcopy(raw))
    message = str(e.value)
    assert len(message.splitlines()) == 1 and len(message) < 300
    assert e.match(rf"^config key {key}.*\(every key: workflow/schemas/config.schema.yaml\)$")


def test_the_schema_fills_defaults_as_snakemake_did():
    from snakemake.utils import validate

    for path in [ROOT / "config.yaml", *sorted((ROOT / "workflow/studies").glob("*.yaml"))]:
        raw = yaml.safe_load(path.read_text())
        expected = copy.deepcopy(raw)
        validate(expected, str(ROOT / "workflow/schemas/config.schema.yaml"), set_default=True)
        assert validate_study(raw) == expected, path
    assert json.dumps(validate_study({"study": "s", "train_tasks": ["toy_nli"]}))  # defaults are plain data
    for size in ("auto", 48, None):
        raw = {"study": "s", "train_tasks": ["toy_nli"], "evaluate": {"generation_batch_size": size}}
        assert validate_study(raw)["evaluate"]["generation_batch_size"] == size


def test_names_the_code_declares_are_folder_names():
    """Datasets and methods are folders of the outputs too; the plan takes them from these lists."""
    from ptft.data.registry import DATASETS
    from ptft.finetune.methods import METHOD_NAMES
    from ptft.plan import PATH_NAME

    assert [n for n in [*DATASETS, *METHOD_NAMES] if not PATH_NAME.match(n)] == []


def test_a_fewshot_pool_smaller_than_shots_at_scoring_names_the_file_and_what_to_do():
    from ptft.evaluate.scoring import build_prompts

    task = get_dataset("toy_nli").task
    pool = [{"premise": "a", "hypothesis": "b", "label": 0}] * 2
    with pytest.raises(ValueError, match=r"data/fewshot/toy_nli.parquet\) has 2 examples.*lower evaluate.shots"):
        build_prompts(
            task, [{"premise": "c", "hypothesis": "d", "label": 1, "idx": 0}], pool, "default", 3, 0, "toy_nli"
        )
