"""Datasets declared in a study file: a new dataset is a study-file entry, not code.

A study's ``datasets`` block names each dataset with its label set, its input template and its
source; :func:`declare` turns every entry into a task type of kind ``sequence_classification``
(a classifier head on the model, :mod:`ptft.finetune.heads`) and a registry entry, so the rest
of ptft looks it up by name like a built-in one::

    datasets:
      cb:
        labels: [entailment, contradiction, neutral]
        template: "{premise} {hypothesis}"
        hub_id: aps/super_glue
        hub_config: cb
        revision: refs/convert/parquet
        eval_split: validation     # the test set is the original validation split
        validation_fraction: 0.1   # validation: the last 10 % of the training split

The template's ``{fields}`` are the task's input fields; ``columns`` maps a field to a column of
another name. The label column holds an index into ``labels`` unless ``label_map`` maps its raw
values onto label names. ``metric`` is ``accuracy`` or ``mcc`` (CoLA).

A dataset of the PCFG world (Jain et al.; ``checkpoints.suite: pcfg``) is one (task, operand) of
the suite's grammar, with the fraction of its records that carry the spurious correlation
count(b) = count(a) + 1::

    datasets:
      count_b: {source: pcfg, task: count, operand: b, spurious: 1.0}

Its records are generated from ``checkpoints.pcfg.world`` (:func:`study_block` copies the world into
each entry), its labels are every answer word of the world, so a model fine-tuned on one task is
scored on another with the same labels, and two entries of the same (task, operand, spurious) hold
the same records.

A dataset of TinyStories-Instruct (Jain et al.'s realistic setting) is its entries, stories told to
an instruction, with one edit of one story feature (:mod:`ptft.data.tinystories`)::

    datasets:
      ts_no_twist: {source: tinystories, feature: Twist, edit: filter}

The model is trained on the story given the instruction and scored by the story's negative
log-likelihood per token (``nll``; ``metric: rougeL`` scores a greedy generation instead).

Every ptft command runs in its own process (a Snakemake job, maybe on another node), so the
declarations travel with the job: the Snakefile puts the study's block into the environment
variable ``PTFT_DATASETS`` (JSON), and :func:`ptft.data.registry.get_dataset` declares them from
there on first use.
"""

from __future__ import annotations

import json
import os
import string

from ptft.data.registry import DATASETS, DatasetSpec
from ptft.data.tasks import TASK_TYPES, TaskType

KIND = "sequence_classification"
ENV = "PTFT_DATASETS"
METRICS = ("accuracy", "mcc")
_SPEC_KEYS = ("hub_id", "hub_config", "revision", "train_split", "eval_split", "fewshot_split", "columns",
              "label_column", "generator", "validation_fraction", "data_dir", "converter")  # fmt: skip
_KEYS = ("labels", "template", "source", "domain", "label_map", "metric", *_SPEC_KEYS)
PCFG_KEYS = ("source", "task", "operand", "spurious", "world")
# A PCFG record's answer for each operand on its text (label indices): what the layer probes read out.
PCFG_COLUMNS = ("answer_a", "answer_b", "answer_c", "spurious")
TINYSTORIES_KEYS = ("source", "feature", "edit", "hub_id", "revision", "train_split", "eval_split", "metric")
TINYSTORIES_HUB = "roneneldan/TinyStoriesInstruct"
_DECLARED: set[str] = set()  # names this process declared (not built in)


def template_fields(template: str, where: str) -> tuple[str, ...]:
    """The ``{field}`` names of ``template``, in order of first use."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{where}.template: {e}") from None
    if not names:
        raise ValueError(f"{where}.template: {template!r} has no {{field}}; it must show the input")
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise ValueError(f"{where}.template: {bad[0]!r} is not a field name")
    return tuple(dict.fromkeys(names))


def study_block(config: dict) -> dict:
    """The study's ``datasets`` block, each PCFG entry with the suite's world (what the jobs declare)."""
    block = dict(config.get("datasets") or {})
    for name, entry in block.items():
        if isinstance(entry, dict) and entry.get("source") == "pcfg":
            if "world" in entry:
                raise ValueError(f"datasets.{name}.world: set by the suite (checkpoints.pcfg.world), not per dataset")
            if config.get("checkpoints", {}).get("suite") != "pcfg":
                raise ValueError(f"datasets.{name}: a pcfg dataset needs checkpoints.suite: pcfg (its grammar)")
            block[name] = {**entry, "world": config["checkpoints"]["pcfg"]["world"]}
    return block


def _pcfg(name: str, entry: dict, where: str) -> tuple[TaskType, DatasetSpec]:
    from ptft.pcfg.world import TASKS, World, answer_words, check_spec

    unknown = sorted(set(entry) - set(PCFG_KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key of a pcfg dataset; allowed: {', '.join(PCFG_KEYS)}")
    if entry.get("task") not in TASKS:
        raise ValueError(f"{where}.task: {entry.get('task')!r} is not one of {', '.join(TASKS)}")
    if entry.get("operand") not in ("a", "b", "c"):
        raise ValueError(f"{where}.operand: {entry.get('operand')!r} is not one of a, b, c")
    spurious = entry.get("spurious", 0.0)
    if not (isinstance(spurious, int | float) and 0 <= spurious <= 1):
        raise ValueError(f"{where}.spurious: expected a fraction in [0, 1], got {spurious!r}")
    if "world" not in entry:
        raise ValueError(f"{where}: a pcfg dataset needs checkpoints.suite: pcfg (its grammar)")
    world = World.from_config(entry["world"])
    check_spec(world, {k: entry[k] for k in ("task", "operand", "spurious") if k in entry}, where)
    task = TaskType(name=name, kind="classification", fields=("prompt",), formats={"default": "{prompt}"},
                    labels=answer_words(world), target_index="label")  # fmt: skip
    pcfg = {"world": entry["world"], "task": entry["task"], "operand": entry["operand"], "spurious": float(spurious)}
    spec = DatasetSpec(name=name, task_type=name, domain="pcfg", source="toy", generator="pcfg", pcfg=pcfg,
                       extra_columns=PCFG_COLUMNS)  # fmt: skip
    return task, spec


def _tinystories(name: str, entry: dict, where: str) -> tuple[TaskType, DatasetSpec]:
    from ptft.data.tinystories import COLUMNS, EDITS

    unknown = sorted(set(entry) - set(TINYSTORIES_KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key of a tinystories dataset; allowed: "
                         f"{', '.join(TINYSTORIES_KEYS)}")  # fmt: skip
    feature = entry.get("feature", "Twist")
    if not isinstance(feature, str) or not feature.strip() or "," in feature:
        raise ValueError(f"{where}.feature: expected one feature name of the header (e.g. Twist), got {feature!r}")
    edit = entry.get("edit", "all")
    if edit not in EDITS:
        raise ValueError(f"{where}.edit: {edit!r} is not one of {', '.join(EDITS)}")
    metric = entry.get("metric", "nll")
    if metric not in ("nll", "rougeL"):
        raise ValueError(f"{where}.metric: {metric!r} is not one of nll, rougeL")
    task = TaskType(name=name, kind="generation", fields=("instruction",), target="story",
                    formats={"default": "{instruction}\nStory: "}, metric=metric)  # fmt: skip
    eval_split = entry.get("eval_split", "validation")
    spec = DatasetSpec(name=name, task_type=name, domain="tinystories", source="hub",
                       hub_id=entry.get("hub_id", TINYSTORIES_HUB), revision=entry.get("revision"),
                       train_split=entry.get("train_split", "train"), eval_split=eval_split, fewshot_split=eval_split,
                       extra_columns=COLUMNS[2:], tinystories={"feature": feature.strip(), "edit": edit})  # fmt: skip
    return task, spec


def build(name: str, entry: dict) -> tuple[TaskType, DatasetSpec]:
    """The task type and the registry entry of declared dataset ``name``; raises naming the key."""
    where = f"datasets.{name}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping, got {entry!r}")
    if entry.get("source") == "pcfg":
        return _pcfg(name, entry, where)
    if entry.get("source") == "tinystories":
        return _tinystories(name, entry, where)
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(_KEYS)}")
    labels = entry.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"{where}.labels: expected a list of at least two label names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}.labels: {labels} names a label twice")
    if not isinstance(entry.get("template"), str):
        raise ValueError(f'{where}.template: expected the input template (e.g. "{{premise}} {{hypothesis}}")')
    fields = template_fields(entry["template"], where)
    metric = entry.get("metric", "accuracy")
    if metric not in METRICS:
        raise ValueError(f"{where}.metric: {metric!r} is not one of {', '.join(METRICS)}")
    source = entry.get("source", "toy" if entry.get("generator") else "hub")
    if source == "hub" and not entry.get("hub_id"):
        raise ValueError(f"{where}.hub_id: a hub dataset needs its hub id (or give source: toy and a generator)")
    if source == "toy" and not entry.get("generator"):
        raise ValueError(f"{where}.generator: a toy dataset needs a generator of ptft.toy.tasks")
    fraction = entry.get("validation_fraction", 0.1)
    if fraction is not None and not (isinstance(fraction, int | float) and 0 < fraction < 1):
        raise ValueError(f"{where}.validation_fraction: expected a fraction in (0, 1) or null, got {fraction!r}")
    label_map = entry.get("label_map")
    if label_map is not None:
        # A YAML study gives integer keys, its JSON copy in the environment string ones: one mapping either way.
        label_map = {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v for k, v in label_map.items()}
        outside = sorted({str(v) for v in label_map.values()} - set(labels))
        if outside:
            raise ValueError(f"{where}.label_map: maps onto {outside}, which are not in labels {labels}")
    task = TaskType(name=name, kind=KIND, fields=fields, formats={"default": entry["template"]},
                    labels=tuple(labels), target_index="label", metric=metric)  # fmt: skip
    spec_kw = {k: entry[k] for k in _SPEC_KEYS if k in entry}
    spec_kw["validation_fraction"] = fraction
    spec = DatasetSpec(name=name, task_type=name, domain=entry.get("domain", name), source=source,
                       label_map=label_map, **spec_kw)  # fmt: skip
    return task, spec


def declare(block: dict | None) -> list[str]:
    """Register every dataset of a study's ``datasets`` block; the names declared.

    A name of the built-in registry is an error naming it; a name declared before (by another
    study's plan in the same process) takes the new declaration.
    """
    names = []
    for name, entry in (block or {}).items():
        task, spec = build(name, entry)
        if name in DATASETS and name not in _DECLARED:
            raise ValueError(f"datasets.{name}: {name!r} is a built-in dataset; give the declared dataset another name")
        TASK_TYPES[name], DATASETS[name] = task, spec
        _DECLARED.add(name)
        names.append(name)
    return names


def export(block: dict | None) -> None:
    """Declare ``block`` here and put it into this process's environment, for the commands it starts."""
    declare(block)
    if block:
        os.environ[ENV] = json.dumps(block, sort_keys=True)
    else:
        os.environ.pop(ENV, None)


def declare_from_environment() -> None:
    text = os.environ.get(ENV)
    if text:
        try:
            block = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"environment variable {ENV}: not the JSON of a datasets block ({e})") from None
        declare(block)
