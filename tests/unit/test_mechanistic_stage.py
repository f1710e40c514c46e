"""The mechanistic study's per-model jobs (layer probes, neuron pruning) on LLaMA, GPT-NeoX, GPT-2 and GPT-Neo
(TinyStories') layouts.

Each model is a small random one of the layout, saved with the PCFG world's tokenizer as a checkpoint folder,
and the records are a PCFG dataset declared as a study declares it.
"""

import pandas as pd
import pytest
import torch

from helpers.tiny_classifiers import MAX_LEN, base_model
from ptft.config import complete
from ptft.data import declared
from ptft.pcfg.tokenizer import build_tokenizer
from ptft.pcfg.world import World, generate_splits

WORLD = {"grammar": {"seed": 0}, "window": 12, "count_window": 8, "occurrence": 2, "offset": 4}
LAYOUTS = ("llama", "gpt_neox", "gpt2", "gpt_neo")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Canonical records of a count-a dataset (train and eval splits), as the data stage writes them."""
    folder = tmp_path_factory.mktemp("pcfg_data")
    splits = generate_splits(World.from_config(WORLD), {"task": "count", "operand": "a"}, {"train": 96, "test": 48}, 0)
    for split, name in (("train", "train"), ("test", "eval")):
        rows = [{"idx": i, **{k: r[k] for k in ("prompt", "label", "answer_a", "answer_b", "answer_c", "spurious")}}
                for i, r in enumerate(splits[split])]  # fmt: skip
        (folder / name).mkdir()
        pd.DataFrame(rows).to_parquet(folder / name / "count_a.parquet")
    return folder


@pytest.fixture
def dataset(declared_registry):
    declared.declare({"count_a": {"source": "pcfg", "task": "count", "operand": "a", "world": WORLD}})
    return "count_a"


@pytest.fixture(scope="module", params=LAYOUTS)
def model_dir(request, tmp_path_factory):
    world = World.from_config(WORLD)
    tokenizer = build_tokenizer(world)
    folder = tmp_path_factory.mktemp(request.param)
    assert world.sample_length < MAX_LEN
    torch.manual_seed(0)
    base_model(request.param, len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


META = {"model": "base/step1", "checkpoint": "step1", "train_task": "none", "method": "base", "lr": None,
        "seed": None, "train_size": None, "parent": None, "shots": 0}  # fmt: skip


def test_a_probe_per_layer_and_target_reads_the_answer_position(model_dir, data, dataset):
    from ptft.interpret.stage import probe_model

    cfg = {"dataset": dataset, "targets": {"pretraining": "answer_a", "finetuning": "answer_b"},
           "train_examples": 96, "iters": 60, "lr": 0.01, "batch_size": 32}  # fmt: skip
    rows = probe_model(model_dir, META, data / "train" / "count_a.parquet", data / "eval" / "count_a.parquet", cfg, 0)
    test = pd.read_parquet(data / "eval" / "count_a.parquet")
    train = pd.read_parquet(data / "train" / "count_a.parquet")
    assert sorted(rows["layer"].unique()) == [0, 1, 2]  # the embeddings and two blocks
    assert set(rows["target"]) == {"pretraining", "finetuning"}
    per = rows.groupby(["target", "layer"])
    assert (per.size() == len(test)).all() and set(rows["example_id"]) == set(test["idx"])
    # Every prompt ends in the same token at the same position: the embeddings there carry nothing, so the layer-0
    # probe answers one class for every example, the training records' most frequent one (a probe starts at zero
    # and its bias learns the training prior first).
    for target, column in (("pretraining", "answer_a"), ("finetuning", "answer_b")):
        layer0 = rows[(rows["target"] == target) & (rows["layer"] == 0)]
        majority = train[column].value_counts().idxmax()
        assert layer0["correct"].mean() == pytest.approx((test[column] == majority).mean())
    again = probe_model(model_dir, META, data / "train" / "count_a.parquet", data / "eval" / "count_a.parquet", cfg, 0)
    assert again["correct"].tolist() == rows["correct"].tolist()


def test_pruning_scores_each_k_and_k0_is_the_model_as_trained(model_dir, data, dataset):
    from ptft.checkpoints.load import load_pretrained
    from ptft.evaluate.run import score_part
    from ptft.interpret.stage import prune_model

    cfg = {"dataset": dataset, "examples": 64, "ks": [0, 3, 10]}
    evaluations = [{"eval_set": dataset, "relation": "pruning", "formats": ["default"]}]
    scoring = complete("evaluate", {})
    rows = prune_model(model_dir, META, data / "train" / "count_a.parquet", data, evaluations, cfg, scoring, 0)
    assert sorted(rows["k"].unique()) == [0, 3, 10]
    neurons = rows.groupby("k")["neurons"].first()
    assert neurons[0] == "" and len(neurons[3].split()) == 3 and len(neurons[10].split()) == 10
    assert neurons[10].split()[:3] == neurons[3].split()  # one ranking: the top 3 are the first 3 of the top 10
    model, tokenizer = load_pretrained(model_dir)
    plain = score_part(model.eval(), tokenizer, {**META, "shots": 0}, evaluations[0], "default", data, scoring, 0)
    k0 = rows[rows["k"] == 0]
    assert k0["score"].tolist() == plain["score"].tolist()
    # Zeroing ten neurons changes the label log-probabilities the scorer keeps for each example.
    k10 = rows[rows["k"] == 10]
    assert "label_logprobs" in rows
    changed = [a != b for a, b in zip(k10["label_logprobs"].map(list), k0["label_logprobs"].map(list), strict=True)]
    assert all(changed)
