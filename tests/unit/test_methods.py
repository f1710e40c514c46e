"""The fine-tuning method registry: lookup, accepted task kinds, strict config blocks, adding a method."""

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from ptft.finetune.methods import METHOD_NAMES, Method, base, get_method, help_texts, register

KINDS = ("classification", "generation", "multiple_choice", "text", "chat")
WHERE = "finetune.per_task.toy_nli"


def test_the_registry_lists_the_methods_in_order_and_names_an_unknown_one():
    assert METHOD_NAMES == ("full", "lora", "lpft", "instruct", "dpo", "extend", "lp", "lp_lora")
    assert [get_method(m).name for m in METHOD_NAMES] == list(METHOD_NAMES)
    with pytest.raises(ValueError, match=re.escape("finetune.methods: unknown method 'ppo'; allowed: full, lora, lpft, "
                                                   "instruct, dpo, extend, lp, lp_lora")):  # fmt: skip
        get_method("ppo")


@pytest.mark.parametrize(
    "method, accepted",
    [
        ("full", {"classification", "generation", "multiple_choice", "text"}),
        ("lora", {"classification", "generation", "multiple_choice", "text"}),
        ("lpft", {"classification"}),
        ("instruct", {"chat"}),
    ],
)
def test_each_method_accepts_its_task_kinds(method, accepted):
    for kind in KINDS:
        if kind in accepted:
            get_method(method).check_task("t", kind)
        else:
            with pytest.raises(ValueError, match="^finetune.methods: .*task 't'"):
                get_method(method).check_task("t", kind)


@pytest.mark.parametrize(
    "method, kind, message",
    [
        ("full", "chat", "task 't' needs method instruct, got 'full'"),
        ("lora", "chat", "task 't' needs method instruct, got 'lora'"),
        ("lpft", "chat", "task 't' needs method instruct, got 'lpft'"),
        ("instruct", "classification", "task 't' needs method full, lora or lpft, got 'instruct'"),
        ("instruct", "generation", "task 't' needs method full or lora, got 'instruct'"),
        ("lpft", "generation", "lpft fits a linear head on labels; task 't' is generation"),
    ],
)
def test_a_refusal_names_what_the_task_needs(method, kind, message):
    with pytest.raises(ValueError) as error:
        get_method(method).check_task("t", kind)
    assert str(error.value) == f"finetune.methods: {message}"


# The defaults that the config schema gave these blocks before the methods' configs held them.
SCHEMA_DEFAULTS = {
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "save": "merged"},
    "lpft": {"l2": 0.001, "max_iter": 100, "batch_size": 16, "folds": 5, "cs": 10},  # the last two: ptft.plan drops
}  # them from a run config at these values (LATER_METHOD_DEFAULTS), so label-word LP-FT runs keep their config


@pytest.mark.parametrize("method", ["lora", "lpft"])
def test_a_config_block_is_filled_with_the_schema_defaults(method):
    parsed = get_method(method).parse_config(None, f"finetune.{method}")
    expected = SCHEMA_DEFAULTS[method]
    assert parsed == expected and list(parsed) == list(expected)
    assert all(type(parsed[k]) is type(v) for k, v in expected.items())  # 16, not 16.0: the run config's JSON
    assert get_method(method).parse_config({}, f"finetune.{method}") == parsed
    assert all(help_texts(get_method(method).config).values())


def test_a_config_block_keeps_what_is_given_in_field_order():
    block = {"target_modules": ["q_proj", "v_proj"], "alpha": 32, "r": 64}
    parsed = get_method("lora").parse_config(block, f"{WHERE}.lora")
    assert parsed == {"r": 64, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "save": "merged"}
    assert list(parsed) == ["r", "alpha", "dropout", "target_modules", "save"]
    assert json.loads(json.dumps(parsed)) == parsed
    assert get_method("lpft").parse_config({"l2": 0}, f"{WHERE}.lpft")["l2"] == 0  # an int where a float is expected


@pytest.mark.parametrize(
    "method, block, error",
    [
        ("lora", {"rank": 64}, "lora.rank: unknown key; allowed: r, alpha, dropout, target_modules, save"),
        ("lora", {"r": "8"}, "lora.r: expected int, got '8'"),
        ("lora", {"r": True}, "lora.r: expected int, got True"),
        ("lora", {"r": 8.0}, "lora.r: expected int, got 8.0"),
        ("lora", {"dropout": False}, "lora.dropout: expected float, got False"),
        ("lora", {"target_modules": ["q_proj", 1]}, "lora.target_modules: expected str or a list of str, got"),
        ("lora", {"save": "both"}, "lora.save: expected one of 'merged', 'adapter', got 'both'"),
        ("lpft", {"max_iter": 1.5}, "lpft.max_iter: expected int, got 1.5"),
        ("lpft", {"l2": None}, "lpft.l2: expected float, got None"),
        ("lpft", {"steps": 3}, "lpft.steps: unknown key; allowed: l2, max_iter, batch_size"),
        ("lpft", [1], "lpft: expected a mapping, got [1]"),
    ],
)
def test_a_config_block_rejects_unknown_keys_and_wrong_types_by_their_path(method, block, error):
    with pytest.raises(ValueError, match="^" + re.escape(f"{WHERE}.{error}")):
        get_method(method).parse_config(block, f"{WHERE}.{method}")


def test_a_method_without_settings_takes_none():
    assert get_method("full").parse_config(None, "finetune.full") == {}
    with pytest.raises(ValueError, match="finetune.instruct: method 'instruct' takes no settings"):
        get_method("instruct").parse_config({"r": 8}, "finetune.instruct")


def test_every_method_but_dpo_trains_on_the_completion_loss(monkeypatch):
    from ptft.finetune import loss

    monkeypatch.setattr(loss, "completion_loss", lambda *args: ("completion loss", args))
    for name in METHOD_NAMES:
        if name == "dpo":  # its loss is tests/unit/test_dpo.py's
            continue
        assert get_method(name).loss("model", "batch", True) == ("completion loss", ("model", "batch", True, None))


def test_a_new_method_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @dataclass(frozen=True)
    class SketchConfig:
        beta: float = field(default=0.1, metadata={"help": "strength of the sketch"})

    @register
    class Sketch(Method):
        name = "sketch"
        task_kinds = ("generation",)
        config = SketchConfig

        def loss(self, model, batch, fast, kept=None):
            return "sketch loss"

    sketch = get_method("sketch")
    assert isinstance(sketch, Sketch) and sketch.loss(None, {}, True) == "sketch loss"
    assert sketch.parse_config(None, "finetune.sketch") == {"beta": 0.1}
    with pytest.raises(ValueError, match="finetune.sketch.gamma: unknown key; allowed: beta"):
        sketch.parse_config({"gamma": 1}, "finetune.sketch")
    sketch.check_task("t", "generation")
    with pytest.raises(ValueError, match="task 't' needs method full, lora or lpft, got 'sketch'"):
        sketch.check_task("t", "classification")
    # The other methods' refusals now offer it where it applies.
    with pytest.raises(ValueError, match="task 't' needs method full, lora or sketch, got 'instruct'"):
        get_method("instruct").check_task("t", "generation")
    with pytest.raises(ValueError, match="'sketch' is registered twice"):
        register(Sketch)


def test_the_registry_loads_without_torch():
    # The plan and the command-line parser look methods up; neither should wait for torch.
    code = "import sys, ptft.finetune.methods, ptft.finetune.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "block, needle",
    [({"r": 0}, r"lora\.r: 0 is less than the minimum 1"), ({"dropout": 1.5}, r"lora\.dropout: 1\.5 is more"),
     ({"alpha": 0}, r"lora\.alpha: 0 must be more than 0")],
)  # fmt: skip
def test_settings_out_of_range_are_named(block, needle):
    with pytest.raises(ValueError, match=needle):
        get_method("lora").parse_config(block, "finetune.lora")
