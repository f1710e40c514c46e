"""The metric and scorer registries: every metric a task names is defined, and scoring dispatches by kind."""

import pytest

from ptft.data.tasks import TASK_TYPES, TaskType
from ptft.evaluate.metrics import AGGREGATIONS, METRICS, accuracy, get_metric, higher_is_better, rouge_l
from ptft.evaluate.scorers import SCORERS, default_metric, get_scorer, register_scorer, unregister_scorer
from ptft.evaluate.scoring import score_items

TASK_METRICS = sorted({m for t in TASK_TYPES.values() for m in t.metrics})


def test_task_types_name_metrics():
    # Guards the parametrisation below against an empty set (it would then test nothing).
    assert {"accuracy", "rougeL", "acc", "acc_norm"} <= set(TASK_METRICS)


@pytest.mark.parametrize("name", [*TASK_METRICS, "loss", "score"])
def test_every_metric_named_is_registered_with_a_direction_and_definition(name):
    metric = get_metric(name)
    assert metric.name == name
    assert isinstance(metric.higher_is_better, bool)
    assert metric.definition.strip()
    assert metric.aggregation in AGGREGATIONS
    assert (metric.corpus is not None) == (metric.aggregation == "corpus")


def test_directions():
    assert {m: higher_is_better(m) for m in ("accuracy", "rougeL", "acc", "acc_norm", "score", "loss")} == {
        "accuracy": True,
        "rougeL": True,
        "acc": True,
        "acc_norm": True,
        "score": True,
        "loss": False,
    }


def test_unknown_metric_is_named_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"'bleu'.*accuracy.*rougeL"):
        get_metric("bleu")
    with pytest.raises(ValueError, match="'bleu'"):
        higher_is_better("bleu")


def test_per_example_functions_agree_with_the_list_functions():
    preds, golds = ["yes", "the cat ran", "", "Running dogs"], ["yes", "the cat sat", "a b", "run dog"]
    assert [METRICS["accuracy"].per_example(p, g) for p, g in zip(preds, golds, strict=True)] == accuracy(preds, golds)
    for stem in (False, True):
        assert [METRICS["rougeL"].per_example(p, g, stemmer=stem) for p, g in zip(preds, golds, strict=True)] == (
            rouge_l(preds, golds, stemmer=stem)
        )
    assert rouge_l(["Running dogs"], ["run dog"], stemmer=True) == [1.0]  # the option reaches the stemmer
    assert all(METRICS[m].per_example is None for m in ("acc", "acc_norm", "loss", "score"))


def test_each_scored_kind_has_a_scorer_producing_its_task_metrics():
    for task in TASK_TYPES.values():
        if task.kind in ("chat", "text", "preference"):  # trained on, never scored
            assert task.kind not in SCORERS and task.metrics == ()
            continue
        scorer = get_scorer(task.kind)
        assert task.metric == scorer.metrics[0] == default_metric(task.kind)
        assert set(task.metrics) <= set(scorer.metrics)
        assert all(m in METRICS for m in scorer.metrics)
    assert {k: default_metric(k) for k in ("classification", "generation", "multiple_choice", "chat")} == {
        "classification": "accuracy",
        "generation": "rougeL",
        "multiple_choice": "acc",
        "chat": "",
    }


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_scoring_an_unscored_kind_names_the_kind(kind):
    task = next(t for t in TASK_TYPES.values() if t.kind == kind)
    with pytest.raises(ValueError, match=rf"'{kind}'.*classification, generation, multiple_choice"):
        score_items(None, None, task, [{"idx": 0, task.target: "x"}], ["p"], {})


def test_a_metric_the_scorer_does_not_produce_is_an_error():
    task = TaskType(name="t", kind="generation", fields=("x",), target="y", formats={"default": "{x}"}, metric="acc")
    with pytest.raises(ValueError, match="acc.*rougeL"):
        score_items(None, None, task, [{"idx": 0, "x": "a", "y": "b"}], ["a"], {})


def test_registering_needs_registered_metrics_and_a_new_kind():
    with pytest.raises(ValueError, match="'bleu'"):
        register_scorer("throwaway", metrics=("bleu",))
    with pytest.raises(ValueError, match="'generation' already has a scorer"):
        register_scorer("generation", metrics=("rougeL",))
    assert "throwaway" not in SCORERS


@pytest.fixture
def throwaway_scorer():
    calls = []

    @register_scorer("throwaway", metrics=("accuracy",))
    def score(model, tokenizer, task, items, prompts, golds, cfg):
        calls.append((model, tokenizer, task, items, prompts, golds, cfg))
        return [{"metric": task.metric, "prediction": golds, "gold": golds, "score": accuracy(golds, golds)}]

    try:
        yield calls
    finally:
        unregister_scorer("throwaway")


def test_score_items_dispatches_to_a_newly_registered_kind(throwaway_scorer):
    task = TaskType(name="t", kind="throwaway", fields=("x",), target="y", formats={"default": "{x}"})
    assert task.metric == "accuracy"  # the default comes from the new kind's scorer
    items = [{"idx": 0, "x": "a", "y": "b"}, {"idx": 1, "x": "c", "y": "d"}]
    result = score_items("model", "tok", task, items, ["a", "c"], {"k": 1})
    assert result == [{"metric": "accuracy", "prediction": ["b", "d"], "gold": ["b", "d"], "score": [1.0, 1.0]}]
    assert throwaway_scorer == [("model", "tok", task, items, ["a", "c"], ["b", "d"], {"k": 1})]


def test_the_throwaway_kind_is_gone_after_the_test():
    assert "throwaway" not in SCORERS
    with pytest.raises(ValueError, match="'throwaway'"):
        get_scorer("throwaway")


def test_selected_model_metadata_takes_the_selection_lr(tmp_path):
    from ptft import io
    from ptft.evaluate.run import model_metadata

    meta = {"model": "ft/x", "lr": None, "shots": 0}
    pointer = tmp_path / "selected.json"
    # The chosen run's model records the optimizer step of its weights (ptft.finetune.snapshots).
    io.write_json(tmp_path / "runs/x/model/ptft_run.json", {"ft_step": 7, "total_steps": 9, "select": "last"})
    io.write_json(pointer, {"selected": True, "lr": 3e-4, "path": str(tmp_path / "runs/x/model")})
    assert model_metadata(pointer, meta) == {**meta, "lr": 3e-4, "ft_step": 7}
    assert model_metadata(str(pointer), meta) == {**meta, "lr": 3e-4, "ft_step": 7}
    assert meta["lr"] is None and "ft_step" not in meta  # the plan's metadata is not changed in place
    assert model_metadata(tmp_path / "runs/x/model", meta) == {**meta, "ft_step": 7}
    assert model_metadata(tmp_path / "checkpoint", meta) == {**meta, "ft_step": 0}  # no fine-tuning step
    other = tmp_path / "summary.json"
    io.write_json(other, {"lr": 1e-3})
    assert model_metadata(other, meta) == {**meta, "ft_step": 0}
