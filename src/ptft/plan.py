"""The experiment plan: one pure function of the config that lists every job of a study.

The Snakefile asks this module for its targets; tests check the plan without Snakemake.
Paths of models and their outputs are built here and nowhere else: a rule's output pattern is a
:class:`Plan` path method called with Snakemake wildcards (``PLAN.run_file(RUN, "model")``),
and the targets are the same methods called with a model of the plan.

Which eval sets a fine-tuned model is scored on, and how each relates to its training task,
is the relation table: ``relations`` in the config (train task -> relation -> eval sets), or,
where a study gives none, derived from task types (:func:`relation`) over all ``eval_sets``.
Base checkpoints are scored on every eval set of the study.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ptft.data import declared
from ptft.data.registry import get_dataset
from ptft.data.tasks import FORMATS
from ptft.finetune.methods import METHOD_NAMES, get_method

BASE = "base"
NO_TASK = "none"
RELATIONS = ("in-domain", "ood", "cross-task", "pretraining")
# Settings that place a run in the matrix (its path says them) rather than change how it trains.
GRID_KEYS = ("methods", "lrs", "seeds", "select_lr", "checkpoints", "from", "per_method")
# How a run's job runs, not what it trains: the rule passes it outside the run config, so changing it
# re-runs nothing (a state saved by one process resumes on several, and back).
JOB_KEYS = ("gpus",)
EVALUATE_JOB_KEYS = ("gpus",)  # the same for evaluate: (its jobs' resources)
# What a training run writes into its folder (under finetune/<run id>/, see Model.run).
RUN_FILES = {"model": "model", "log": "train_log.parquet", "probes": "probes.parquet", "summary": "summary.json",
             "snapshots": "snapshots"}  # fmt: skip
PROBE_DEFAULTS = {"every": 25, "examples": 32, "path": None, "set": None, "eos": False, "argmax_of": None}
# Settings added after studies had run: a run config leaves them out while they hold their default, so
# that upgrading ptft re-runs (and invalidates the resumable state of) no existing run.
LATER_DEFAULTS = {"warmup_steps": None, "schedule": "linear", "optimizer": "adamw", "max_prompt_length": None,
                  "min_lr_ratio": 0.0, "classifier_head": "linear", "classifier_dropout": 0.1,
                  "cuda_graphs": False, "compile": False}  # fmt: skip
LATER_PROBE_DEFAULTS = {"set": None, "eos": False, "argmax_of": None}
LATER_METHOD_DEFAULTS = {"lpft": {"folds": 5, "cs": 10}}  # a method's settings added since runs were made
SNAPSHOT_DEFAULTS = {"every": None, "steps": None, "per_epoch": False, "start": True, "keep": False,
                     "select": "last", "metric": "loss", "trajectory": True}  # fmt: skip
# The checkpoint of the PCFG suite's baseline run, pre-trained on the fine-tuning task (checkpoints.pcfg.baseline).
PCFG_BASELINE = "scratch"
# A run starts from the pre-training checkpoint unless its task's ``from`` names another run.
FROM_CHECKPOINT = "checkpoint"
# A name that becomes one folder of an output path: no separator, no "." or "..", no hidden folder.
PATH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def format_lr(lr: float) -> str:
    return f"{lr:g}"


def relation(train_task: str, eval_set: str) -> str:
    """The derived relation, for studies without a relation table.

    ``pretraining`` for base checkpoints (the model has seen pre-training only); ``in-domain``
    for the training task's own test set; ``ood`` for another dataset of the same task type;
    ``cross-task`` for a dataset of another task type. After instruction tuning on a chat
    mixture (the toy one holds every toy task of its domain): ``in-domain`` for the eval sets of
    the mixture's domain, ``ood`` for the others.
    """
    if train_task == NO_TASK:
        return "pretraining"
    if train_task == eval_set:
        return "in-domain"
    train = get_dataset(train_task)
    if train.task.kind == "chat":  # an instruction mixture holds its domain's tasks, not the other domains'
        return "in-domain" if get_dataset(eval_set).domain == train.domain else "ood"
    if train.task_type == get_dataset(eval_set).task_type:
        return "ood"
    return "cross-task"


@dataclass(frozen=True)
class Evaluation:
    """One eval set a model is scored on: how it relates to the model's training, in which formats."""

    eval_set: str
    relation: str
    formats: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"eval_set": self.eval_set, "relation": self.relation, "formats": list(self.formats)}


@dataclass(frozen=True)
class Model:
    """A model to evaluate: a base checkpoint or one fine-tuning run of it.

    A run starts from the pre-training ``checkpoint`` or, where its task says ``from``, from
    another run's model (``parent``); ``checkpoint`` is the pre-training checkpoint either way.
    """

    checkpoint: str
    train_task: str = NO_TASK
    method: str = BASE
    lr: float | None = None
    seed: int | None = None
    evaluations: tuple[Evaluation, ...] = field(default=(), compare=False)
    shots: int = field(default=0, compare=False)
    # The run of the lr grid chosen on validation (finetune.select_lr); its lr is known only then.
    selected: bool = False
    train_size: int | None = None  # the size of its training subsample, where the task sweeps sizes
    parent: Model | None = None
    snapshots: bool = field(default=False, compare=False)  # it saves its trajectory (finetune.snapshots)

    @property
    def is_base(self) -> bool:
        return self.method == BASE

    @property
    def run(self) -> str:
        """The fine-tuning run's folder under ``finetune/`` (a selection's pointer, plus ``.json``).

        ``<checkpoint>/<task>[/n<size>]/<method>/lr<lr>/seed<seed>``, and for a run from a run the
        parent's folder, ``then``, and the rest: the chain reads from left to right.
        """
        if self.is_base:
            raise ValueError(f"base checkpoint {self.checkpoint!r} has no fine-tuning run")
        head = f"{self.parent.run}/then" if self.parent is not None else self.checkpoint
        task = self.train_task if self.train_size is None else f"{self.train_task}/n{self.train_size}"
        tail = "selected" if self.selected else f"lr{format_lr(self.lr)}"
        return f"{head}/{task}/{self.method}/{tail}/seed{self.seed}"

    @property
    def id(self) -> str:
        return f"base/{self.checkpoint}" if self.is_base else f"ft/{self.run}"

    @property
    def grid_key(self) -> tuple:
        """What the runs of one lr grid share (and a selection over it)."""
        return (self.checkpoint, self.train_task, self.method, self.seed, self.train_size, self.parent)

    def snapshot_id(self, step: int) -> str:
        """The id of the run's model after ``step`` optimizer steps (a snapshot of its trajectory)."""
        return f"{self.id}/snapshots/step{step}"

    @property
    def eval_sets(self) -> tuple[str, ...]:
        return tuple(e.eval_set for e in self.evaluations)

    def metadata(self) -> dict:
        return {
            "model": self.id,
            "checkpoint": self.checkpoint,
            "train_task": self.train_task,
            "method": self.method,
            "lr": self.lr,
            "seed": self.seed,
            "train_size": self.train_size,
            "parent": self.parent.id if self.parent is not None else None,
            "shots": self.shots,
        }


@dataclass(frozen=True)
class ReportItem:
    kind: str  # "table" (its HTML page) or "figure" (its PNG)
    name: str
    path: str
    category: str  # the analysis's category in the report
    caption: str


@dataclass(frozen=True)
class Plan:
    study: str
    suite: str
    checkpoint_entries: tuple[dict, ...]
    train_tasks: tuple[str, ...]
    eval_sets: tuple[str, ...]
    base_models: tuple[Model, ...]
    finetune_runs: tuple[Model, ...]  # the fine-tuned models that are evaluated
    finetune_configs: dict[str, dict]
    data_configs: dict[str, dict]
    training_runs: tuple[Model, ...] = ()  # every run of the grid (more than the evaluated with select_lr)
    select_lr: dict | None = None
    dissect_task: str | None = None  # the corpus whose fine-tuned models the Dissecting analysis measures
    # The evaluation settings a run scores its validation split with (finetune.select_lr.metric: score).
    score_settings: dict | None = None
    root: str = "results/study"  # results/<study>: every output of the study lies under it
    derive: bool = False  # the study derives controlled-variable text (a derive section)
    probe_sets: dict | None = None  # name -> its probe_sets block: the probe sets the study builds
    mechanistic: dict | None = None  # the mechanistic section (layer probes, pruning, reverse fine-tuning)

    def probe_set_path(self, name: str) -> str:
        """A built probe set (its record of version and settings is the ``.json`` beside it)."""
        return f"{self.root}/probes/{name}.parquet"

    def probe_set_input(self, task: str) -> str | None:
        """The probe set a task's runs read (``finetune.probes.set``), or None."""
        name = (self.finetune_configs[task].get("probes") or {}).get("set")
        return None if name is None else self.probe_set_path(name)

    @property
    def pretrained_here(self) -> bool:
        """Whether the workflow pre-trains the suite (toy, pcfg) rather than pointing at one (hub, local)."""
        return self.suite in ("toy", "pcfg")

    def pretraining_checkpoints(self, run: str) -> tuple[str, ...]:
        """The checkpoints one pre-training run of the PCFG suite writes (``pretrain`` or ``baseline``)."""
        return tuple(e["name"] for e in self.checkpoint_entries if e.get("run") == run)

    def pretraining_manifest_path(self, run: str) -> str:
        """The manifest of one pre-training run of the PCFG suite (the suite's manifest joins them)."""
        return f"{self.root}/checkpoints/{run}.json"

    # -- where things lie (each also takes Snakemake wildcard patterns, e.g. checkpoint="{checkpoint}")
    def checkpoint_path(self, checkpoint: str) -> str:
        """A pre-trained-here checkpoint's folder, or the pointer file that pins a hub or local checkpoint."""
        path = f"{self.root}/checkpoints/{checkpoint}"
        return path if self.pretrained_here else f"{path}.json"

    @property
    def manifest_path(self) -> str:
        return f"{self.root}/checkpoints/manifest.json"

    def raw_path(self, dataset: str, source: str | None = None) -> str:
        """A dataset's split files: generated into raw/ (toy), or the record of their download (hub)."""
        if (source or get_dataset(dataset).source) == "toy":
            return f"{self.root}/raw/{dataset}"
        return f"{self.root}/downloads/{dataset}.json"

    def data_path(self, split: str, dataset: str) -> str:
        """A prepared split: ``train``, ``validation``, ``eval`` (scored items) or ``fewshot`` (pool)."""
        return f"{self.root}/data/{split}/{dataset}.parquet"

    def train_data_path(self, task: str, size: int | None = None) -> str:
        """A training subsample: the task's one size, or size ``size`` of its sweep (nested samples)."""
        return self.data_path("train", task) if size is None else f"{self.root}/data/train/{task}/n{size}.parquet"

    def run_file(self, run: str, name: str) -> str:
        """A training run's ``model`` folder, ``log``, ``probes``, ``summary`` or ``snapshots`` (:data:`RUN_FILES`)."""
        return f"{self.root}/finetune/{run}/{RUN_FILES[name]}"

    def run_dir(self, run: str) -> str:
        return f"{self.root}/finetune/{run}"

    def state_path(self, name: str) -> str:
        """Resumable state and caches, outside every rule's outputs (Snakemake deletes those on re-runs)."""
        return f"{self.root}/.state/{name}"

    def state_dir(self, run: str) -> str:
        return self.state_path(f"finetune/{run}")

    def selection_path(self, run: str) -> str:
        return f"{self.root}/finetune/{run}.json"

    def start_path(self, model: Model) -> str:
        """What a training run starts from: the parent run's model, or the pre-training checkpoint."""
        if model.parent is not None:
            return self.run_file(model.parent.run, "model")
        return self.checkpoint_path(model.checkpoint)

    def predictions_path(self, model_id: str) -> str:
        return f"{self.root}/eval/{model_id}/predictions.parquet"

    def classifier_measures_path(self, model_id: str) -> str:
        """A fine-tuned classifier's calibration and feature quantities per eval set (the LP-FT study)."""
        return f"{self.root}/eval/{model_id}/classifier.parquet"

    def reliability_path(self, model_id: str) -> str:
        """The bins of its reliability diagrams, before and after temperature scaling."""
        return f"{self.root}/eval/{model_id}/reliability.parquet"

    @property
    def base_scored(self) -> bool:
        """Whether a pre-training checkpoint is scored (not in a study of classifier heads alone)."""
        return any(m.evaluations for m in self.base_models)

    @property
    def classifier_runs(self) -> tuple[Model, ...]:
        """Evaluated fine-tuned models of declared classification tasks (a classifier head each)."""
        return tuple(m for m in self.finetune_runs if get_dataset(m.train_task).task.kind == declared.KIND)

    def _mechanistic_models(self, part: str) -> tuple[Model, ...]:
        block = (self.mechanistic or {}).get(part)
        if block is None:
            return ()
        tasks = block.get("tasks")
        runs = tuple(m for m in self.finetune_runs if tasks is None or m.train_task in tasks)
        return (self.base_models if block.get("base") else ()) + runs

    @property
    def probed_models(self) -> tuple[Model, ...]:
        """The models whose layers are probed (mechanistic.layer_probes): base checkpoints, then runs."""
        return self._mechanistic_models("layer_probes")

    @property
    def pruned_models(self) -> tuple[Model, ...]:
        """The fine-tuned models whose MLP neurons are pruned (mechanistic.pruning)."""
        return self._mechanistic_models("pruning")

    def layer_probes_path(self, model_id: str) -> str:
        """A model's probe accuracy per layer and target (mechanistic.layer_probes)."""
        return f"{self.root}/mechanistic/{model_id}/layer_probes.parquet"

    def pruning_path(self, model_id: str) -> str:
        """A model's scores on the pruning eval sets with its top-K neurons zeroed, per K (mechanistic.pruning)."""
        return f"{self.root}/mechanistic/{model_id}/pruning.parquet"

    def pruning_evaluations(self) -> list[dict]:
        """What each K of a pruned model is scored on: the eval sets in their first format, zero-shot."""
        block = self.mechanistic["pruning"]
        sets = block.get("eval_sets") or [block["dataset"]]
        return [{"eval_set": e, "relation": "pruning", "formats": [_first_format(e)]} for e in sets]

    def trajectory_path(self, model_id: str) -> str:
        """A run's snapshots scored like its final model (one predictions table, an ``ft_step`` each)."""
        return f"{self.root}/eval/{model_id}/trajectory.parquet"

    def derive_path(self, name: str) -> str:
        """The derivation stage's ``corpus`` (sampled documents) and ``variants`` (their rewrites)."""
        return f"{self.root}/derive/{name}.parquet"

    def dissect_path(self, model_id: str) -> str:
        """A model's log-likelihood of every original and variant (the Dissecting analysis)."""
        return f"{self.root}/dissect/{model_id}/loglik.parquet"

    def dissect_trajectory_path(self, model_id: str) -> str:
        """The same for every snapshot of a run's trajectory."""
        return f"{self.root}/dissect/{model_id}/trajectory.parquet"

    def log_path(self, name: str) -> str:
        return f"{self.root}/logs/{name}.log"

    def table_path(self, name: str) -> str:
        return f"{self.root}/tables/{name}.parquet"

    def report_page(self, table: str) -> str:
        return f"{self.root}/report/{table}.html"

    def figure_paths(self, name: str) -> tuple[str, str]:
        """PNG (report, slides) and SVG (paper) of a figure."""
        return f"{self.root}/figures/{name}.png", f"{self.root}/figures/{name}.svg"

    def probes_path(self, model: Model) -> str:
        return self.run_file(model.run, "probes")

    @cached_property
    def _by_id(self) -> dict[str, Model]:
        return {m.id: m for m in (*self.models, *self.training_runs)}

    def training_run(self, run: str) -> Model:
        """The run (of the lr grid, or a selection) whose folder under finetune/ is ``run``."""
        return self.model(f"ft/{run}")

    # -- what the study makes
    @property
    def probe_runs(self) -> tuple[Model, ...]:
        """Training runs that log learning-dynamics probes."""
        return tuple(m for m in self.training_runs if self.finetune_configs[m.train_task].get("probes"))

    def analyses(self) -> list:
        """The registered analyses this study has (:mod:`ptft.analysis.registry`), in report order."""
        from ptft.analysis import ANALYSES

        # A study that scores nothing (eval_sets: []) has no performance table, nor what is built from it.
        scored = any(m.evaluations for m in self.models)
        return [a for a in ANALYSES.values() if a.applies(self) and (scored or "performance" not in a.inputs(self))]

    def tables(self) -> dict[str, str]:
        """Every table of the report: name -> its analysis's name."""
        return {t.name: a.name for a in self.analyses() for t in a.tables if t.applies(self)}

    def figures(self) -> dict[str, str]:
        """Every figure: name -> its analysis's name."""
        return {f: a.name for a in self.analyses() for f in a.figures(self)}

    def report_items(self) -> list[ReportItem]:
        """Every item of the report: each table's page and each figure's PNG, with category and caption."""
        items = []
        for a in self.analyses():
            items += [ReportItem("table", t.name, self.report_page(t.name), a.category, t.caption)
                      for t in a.tables if t.applies(self)]  # fmt: skip
            items += [ReportItem("figure", f, self.figure_paths(f)[0], a.category, a.figure_caption)
                      for f in a.figures(self)]  # fmt: skip
        return items

    def analysis_tables(self, analysis) -> list[str]:
        """The tables an analysis's job writes in this study (its others are written by another rule)."""
        return [t.name for t in analysis.tables if t.name in analysis.built_here and t.applies(self)]

    def analysis_spec(self, analysis) -> dict:
        """What an analysis's job is told of the plan: its figures and its own spec."""
        return {**analysis.spec(self), "figures": analysis.figures(self)}

    def targets(self) -> list[str]:
        """Every final output: each table and its report page, each figure in PNG and SVG."""
        out = [p for t in self.tables() for p in (self.report_page(t), self.table_path(t))]
        return out + [p for f in self.figures() for p in self.figure_paths(f)]

    @property
    def dissect_models(self) -> tuple[Model, ...]:
        """Models whose log-likelihood of each variant is measured: every run on the Dissecting
        corpus, the model each started from (base checkpoint or parent run) and its snapshots."""
        runs = tuple(m for m in self.training_runs if m.train_task == self.dissect_task)
        starts = {self.dissect_start(m) for m in runs}
        base = tuple(m for m in self.base_models if m in starts)
        parents = tuple(dict.fromkeys(m for m in starts if not m.is_base and m not in runs))
        return base + parents + runs

    def dissect_start(self, model: Model) -> Model:
        """The model a Dissecting change is measured from: the run's parent, or its base checkpoint."""
        return model.parent if model.parent is not None else Model(model.checkpoint)

    @property
    def snapshot_runs(self) -> tuple[Model, ...]:
        """Evaluated fine-tuned models whose trajectory (``finetune.snapshots``) is scored too."""
        return tuple(m for m in self.finetune_runs if m.snapshots)

    def needs_validation(self, task: str) -> bool:
        """A task's runs score a validation split: to select an lr or a best snapshot."""
        snapshots = self.finetune_configs[task].get("snapshots") or {}
        return bool(self.select_lr) or snapshots.get("select") == "best_validation"

    def run_config(self, task: str, method: str) -> dict:
        """What one training job is given: the task's finetune settings without the grid keys
        (its own method, lr and seed are in its path) and without other methods' settings, so
        that adding an lr, a seed or a method re-runs no existing job."""
        cfg = {k: v for k, v in method_config(self.finetune_configs[task], method).items()
               if k not in GRID_KEYS + JOB_KEYS}  # fmt: skip
        for other in method_blocks():
            if other != method:
                cfg.pop(other, None)
        if cfg.get("snapshots"):  # whether the workflow keeps the folder changes nothing the run trains
            cfg["snapshots"] = {k: v for k, v in cfg["snapshots"].items()
                                if k != "keep" and (k, v) != ("trajectory", True)}  # fmt: skip
        for key, default in LATER_DEFAULTS.items():
            if cfg.get(key, default) == default:
                cfg.pop(key, None)
        for key, default in LATER_METHOD_DEFAULTS.get(method, {}).items():
            if cfg.get(method, {}).get(key, default) == default:
                cfg[method] = {k: v for k, v in cfg[method].items() if k != key}
        if cfg.get("probes"):
            probes = {k: v for k, v in cfg["probes"].items() if LATER_PROBE_DEFAULTS.get(k, ...) != v}
            if probes.get("set") is not None:
                probes["path"] = self.probe_set_path(probes["set"])
            cfg["probes"] = probes
        by_score = self.select_lr and self.select_lr["metric"] == "score"
        if by_score or (cfg.get("snapshots") or {}).get("metric") == "score":
            cfg["validation_score"] = self.score_settings
        return cfg

    def gpus(self, task: str, method: str) -> int:
        """``finetune.gpus`` of a task's runs of ``method``: the GPUs (processes) its job shards over."""
        return run_gpus(self.finetune_configs[task], method)

    def selections(self) -> list[Model]:
        """The selection of every lr grid that is selected over (a model whose lr the grid decides)."""
        if not self.select_lr:
            return []
        # Only what is evaluated is selected: a corpus's runs (no eval sets) are all measured.
        grids = dict.fromkeys(m.grid_key for m in self.training_runs if m.evaluations)
        return [m for m in self.finetune_runs if m.selected and m.grid_key in grids] if grids else []

    def grid_runs(self, model: Model) -> list[Model]:
        """The runs of the lr grid that ``model`` (a run or a selection) belongs to."""
        return [m for m in self.training_runs if m.grid_key == model.grid_key]

    @property
    def checkpoints(self) -> tuple[str, ...]:
        return tuple(e["name"] for e in self.checkpoint_entries)

    @property
    def models(self) -> tuple[Model, ...]:
        return self.base_models + self.finetune_runs

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.train_tasks + self.eval_sets))

    def model(self, model_id: str) -> Model:
        try:
            return self._by_id[model_id]
        except KeyError:
            raise KeyError(f"no model {model_id!r} in the plan of study {self.study!r}") from None

    def relation_rows(self) -> list[dict]:
        """The relation table as rows (train_task, eval_set, relation), one per fine-tuned pair."""
        seen = {}
        for m in self.finetune_runs:
            for e in m.evaluations:
                seen[(m.train_task, e.eval_set)] = e.relation
        return [{"train_task": t, "eval_set": s, "relation": r} for (t, s), r in seen.items()]


def check_path_name(key: str, name) -> None:
    """A name that is one folder of the outputs' paths (study, checkpoint) cannot leave its folder."""
    if not isinstance(name, str) or not PATH_NAME.match(name):
        raise ValueError(
            f"{key}: {name!r} cannot name a folder of the results; use letters, digits and . _ + - "
            "(starting with a letter or digit)"
        )


def _check_shots(config: dict, eval_sets: tuple[str, ...]) -> None:
    """Each eval set's few-shot pool holds at most data.fewshot_pool_size examples; a prompt draws shots of them."""
    pool = config["data"]["fewshot_pool_size"]
    for key in ("shots", "finetuned_shots"):
        shots = config["evaluate"][key]
        if shots > pool:
            raise ValueError(
                f"evaluate.{key}: {shots} in-context examples, but data.fewshot_pool_size is {pool}, the size of the "
                f"few-shot pool of each eval set ({', '.join(eval_sets)}); raise data.fewshot_pool_size to at least "
                f"{shots} or lower evaluate.{key}"
            )


def checkpoint_entries(config: dict, results: str | Path = "results") -> tuple[dict, ...]:
    """The suite's checkpoints: name, step, tokens and where each comes from."""
    from ptft.checkpoints import hub
    from ptft.checkpoints.suite import checkpoint_name, save_steps

    ck = config["checkpoints"]
    if ck["suite"] == "toy":
        toy = ck["toy"]
        per_step = toy["batch_size"] * toy["seq_len"]
        steps = save_steps(toy["steps"], toy["n_checkpoints"], toy["first_step"])
        return tuple({"name": checkpoint_name(s), "step": s, "tokens": s * per_step} for s in steps)
    if ck["suite"] == "pcfg":
        pcfg = ck["pcfg"]
        if pcfg.get("pretrain") is None:
            raise ValueError("checkpoints.pcfg.pretrain: the suite's pre-training run needs its tasks and prior")
        # Every sample has the same length: <sos> T O O' <sot>, the window's text, <eot> <art> answer <eos>.
        per_step = pcfg["batch_size"] * (pcfg["world"]["window"] + 9)
        steps = save_steps(pcfg["steps"], pcfg["n_checkpoints"], pcfg["first_step"])
        entries = [{"name": checkpoint_name(s), "step": s, "tokens": s * per_step, "run": "pretrain"} for s in steps]
        if pcfg.get("baseline") is not None:
            entries.append({"name": PCFG_BASELINE, "step": pcfg["steps"], "tokens": pcfg["steps"] * per_step,
                            "run": "baseline"})  # fmt: skip
        return tuple(entries)
    if ck["suite"] == "hub":
        if "hub" not in ck:
            raise ValueError("checkpoints.hub: required when checkpoints.suite is 'hub'")
        entries = hub.hub_suite(ck["hub"], Path(results) / config["study"] / "checkpoints" / "suite.json")
        for e in entries:
            check_path_name(f"checkpoints.hub.revisions (revision {e['revision']!r})", e["name"])
        return tuple(entries)
    if ck["suite"] == "local":
        if not ck.get("local"):
            raise ValueError("checkpoints.local: required when checkpoints.suite is 'local'")
        for i, e in enumerate(ck["local"]):
            check_path_name(f"checkpoints.local[{i}].name", e.get("name"))
        return tuple(hub.local_suite(ck["local"]))
    raise ValueError(f"checkpoints.suite: unknown suite {ck['suite']!r}")


def _formats(config: dict, eval_set: str) -> tuple[str, ...]:
    """The study's formats that the eval set's task has; only the first outside ``format_study_sets``."""
    ev = config["evaluate"]
    own = get_dataset(eval_set).task.formats
    formats = [f for f in ev["formats"] if f in own]
    study_sets = ev.get("format_study_sets")
    if study_sets is not None and eval_set not in study_sets:
        formats = formats[:1]
    if not formats:
        raise ValueError(f"evaluate.formats: none of {ev['formats']} exists for eval set {eval_set!r}")
    return tuple(formats)


def relation_table(config: dict, train_tasks: tuple[str, ...], eval_sets: tuple[str, ...]) -> dict:
    """train task -> ((eval set, relation), ...), from the config's table or derived from task types."""
    table = config.get("relations")
    # A corpus of plain documents is no task to score: its models are measured by the Dissecting analysis;
    # preference pairs neither: their runs are measured by their probes (a relations table may still score them).
    corpus = {t for t in train_tasks if get_dataset(t).task.kind in ("text", "preference")}
    if table is None:
        return {t: () if t in corpus else tuple((e, relation(t, e)) for e in eval_sets) for t in train_tasks}
    unknown = [t for t in table if t not in train_tasks]
    if unknown:
        raise ValueError(f"relations: {unknown} are not in train_tasks {list(train_tasks)}")
    out = {}
    for task in train_tasks:
        pairs = [(e, rel) for rel, sets in table.get(task, {}).items() for e in sets]
        for e, rel in pairs:
            if rel not in RELATIONS:
                raise ValueError(f"relations.{task}: unknown relation {rel!r}; allowed: {', '.join(RELATIONS)}")
            if e not in eval_sets:
                raise ValueError(f"relations.{task}.{rel}: eval set {e!r} is not in eval_sets")
        names = [e for e, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"relations.{task}: an eval set is listed under two relations: {names}")
        if not pairs and task not in corpus:
            raise ValueError(f"relations: train task {task!r} has no eval sets")
        out[task] = tuple(pairs)
    return out


def method_blocks() -> list[str]:
    """Methods with settings of their own (``finetune.<method>``, e.g. ``lora``)."""
    return [m for m in METHOD_NAMES if get_method(m).config is not None]


def _check_names(config: dict) -> None:
    """Methods and prompt formats are names of the lists the code declares; the schema takes any string."""
    from ptft.config import schema

    ft = config["finetune"]
    sections = [("finetune", ft), *((f"finetune.per_task.{t}", v) for t, v in ft.get("per_task", {}).items())]
    # The schema takes any mapping beside its settings as a method's own block (lora: {...}).
    settings = {*schema()["properties"]["finetune"]["properties"], *schema()["$defs"]["run"]["properties"]}
    for where, section in sections:
        for key, value in section.items():
            if key not in settings and key not in method_blocks() and isinstance(value, dict):
                blocks = ", ".join(method_blocks())
                raise ValueError(f"{where}.{key}: unknown key (not a setting, nor a method's settings: {blocks})")
    formats = [("evaluate.formats", f) for f in config["evaluate"]["formats"]]
    formats.append(("aggregate.figure_format", config["aggregate"]["figure_format"]))
    for where, section in sections:
        for m in section.get("methods", []):
            try:
                get_method(m)
            except ValueError as e:
                raise ValueError(f"{where}.methods: {e}") from None
        if "format" in section:
            formats.append((f"{where}.format", section["format"]))
    for where, fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"{where}: unknown prompt format {fmt!r}; allowed: {', '.join(FORMATS)}")


def _method_settings(config: dict, task: str, merged: dict) -> dict:
    """Each method's block checked by the method (an unknown key is an error naming its path), defaults filled."""
    ft = config["finetune"]
    for name in method_blocks():
        method = get_method(name)
        method.parse_config(ft.get(name), f"finetune.{name}")
        method.parse_config(ft.get("per_task", {}).get(task, {}).get(name), f"finetune.per_task.{task}.{name}")
        merged[name] = method.parse_config(merged.get(name), f"finetune.{name}")
    return merged


def _merged(section: dict, task: str) -> dict:
    """A config section with the task's ``per_task`` overrides applied (nested settings key by key)."""
    out = {k: v for k, v in section.items() if k != "per_task"}
    for key, value in section.get("per_task", {}).get(task, {}).items():
        if isinstance(value, dict):
            value = {**(out.get(key) or {}), **value}
        out[key] = value
    if out.get("probes") is not None:
        out["probes"] = {**PROBE_DEFAULTS, **out["probes"]}
    if out.get("snapshots") is not None:
        out["snapshots"] = {**SNAPSHOT_DEFAULTS, **out["snapshots"]}
    return out


def method_config(ft: dict, method: str) -> dict:
    """A task's finetune settings for one of its methods: ``per_method.<method>`` over the task's own.

    This is how DPO trains with its own lrs, epochs and start (the task's SFT runs) beside the
    SFT runs of the same task; a nested block (``probes``, ``dpo``, ...) is merged key by key.
    """
    out = {k: v for k, v in ft.items() if k != "per_method"}
    for key, value in (ft.get("per_method") or {}).get(method, {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out


def run_gpus(ft: dict, method: str) -> int:
    """``finetune.gpus`` of a task's (``ft``: its finetune settings) runs of ``method``."""
    return int(method_config(ft, method).get("gpus", 1))


def _check_per_method(task: str, ft: dict) -> None:
    for method, block in (ft.get("per_method") or {}).items():
        where = f"finetune.per_task.{task}.per_method.{method}"
        if method not in ft["methods"]:
            raise ValueError(f"{where}: {method!r} is not a method of task {task!r} ({ft['methods']})")
        fixed = [k for k in ("methods", "seeds", "checkpoints", "select_lr", "per_task", "per_method") if k in block]
        if fixed:
            raise ValueError(f"{where}.{fixed[0]}: set per task, not per method")


def _starts(config: dict, ft_configs: dict, data_configs: dict) -> list[tuple[str, str, list]]:
    """Each (training task, method)'s starting points: ``"checkpoint"`` or a parent {task, method, lr}, checked.

    Returned in an order where every parent comes before its children. A parent's task defaults to
    the child's own (DPO from the same task's SFT runs).
    """
    starts = {}
    for task, task_ft in ft_configs.items():
        _check_per_method(task, task_ft)
        for method in task_ft["methods"]:
            ft = method_config(task_ft, method)
            given = ft.get("from")
            given = [FROM_CHECKPOINT] if given is None else given if isinstance(given, list) else [given]
            where = f"finetune.per_task.{task}.from"
            if method in (task_ft.get("per_method") or {}) and "from" in task_ft["per_method"][method]:
                where = f"finetune.per_task.{task}.per_method.{method}.from"
            checked = []
            for start in given:
                if start == FROM_CHECKPOINT:
                    checked.append(start)
                    continue
                start = {"task": task, **start}
                parent = start["task"]
                if parent not in ft_configs:
                    raise ValueError(f"{where}: task {parent!r} is not in train_tasks {list(ft_configs)}")
                if (parent, start["method"]) == (task, method):
                    raise ValueError(f"{where}: a run cannot start from runs of its own task and method")
                if start["method"] not in ft_configs[parent]["methods"]:
                    raise ValueError(f"{where}: method {start['method']!r} is not a method of {parent!r} "
                                     f"({ft_configs[parent]['methods']})")  # fmt: skip
                parent_lrs = method_config(ft_configs[parent], start["method"])["lrs"]
                if start.get("lr") is not None and float(start["lr"]) not in map(float, parent_lrs):
                    raise ValueError(f"{where}: lr {start['lr']} is not an lr of {parent!r} ({parent_lrs})")
                missing = [s for s in ft["seeds"] if s not in ft_configs[parent]["seeds"]]
                if missing:
                    raise ValueError(f"{where}: seeds {missing} of {task!r} have no run of {parent!r} to start from "
                                     f"(its seeds: {ft_configs[parent]['seeds']}); a run starts from the parent run "
                                     "of its own seed")  # fmt: skip
                checked.append(start)
            starts[task, method] = checked
    order, visiting = [], set()

    def visit(unit, chain):
        if unit in order:
            return
        if unit in visiting:
            cycle = " -> ".join(f"{t} ({m})" for t, m in chain)
            raise ValueError(f"finetune.per_task.*.from: the runs start from each other in a cycle: {cycle}")
        visiting.add(unit)
        for start in starts[unit]:
            if start != FROM_CHECKPOINT:
                parent = (start["task"], start["method"])
                visit(parent, [*chain, parent])
        order.append(unit)

    # Task by task as the study lists them (a task's parents first), each task's methods in its order.
    for unit in starts:
        visit(unit, [unit])
    return [(t, m, starts[t, m]) for t, m in order]


def _sizes(data: dict, task: str) -> list[int | None]:
    """The training-set sizes a task sweeps (``data.per_task.<task>.train_sizes``), or [None] for its one size."""
    sizes = data.get("train_sizes")
    if not sizes:
        return [None]
    if data.get("train_fraction") is not None:
        raise ValueError(f"data.per_task.{task}: give train_sizes or train_fraction, not both")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"data.per_task.{task}.train_sizes: {sizes} lists a size twice")
    return sorted(int(n) for n in sizes)


def _parents(runs: list[Model], start, checkpoint: str, seed: int) -> list[Model | None]:
    """The runs of ``checkpoint`` and ``seed`` that a run starts from (``[None]``: the checkpoint itself)."""
    if start == FROM_CHECKPOINT:
        return [None]
    lr = start.get("lr")
    return [r for r in runs if (r.checkpoint, r.train_task, r.method, r.seed) == (checkpoint, start["task"],
            start["method"], seed) and (lr is None or r.lr == float(lr))]  # fmt: skip


def build_plan(config: dict, results: str | Path = "results") -> Plan:
    """Every checkpoint × training task × method × lr × seed, and what each model is scored on.

    ``results`` is where ``<study>/checkpoints/suite.json`` is read (and, for a ``select`` rule
    resolved for the first time, written).
    """
    # Before the suite: a hub selection rule writes its manifest under results/<study>/.
    check_path_name("study", config["study"])
    declared.declare(declared.study_block(config))
    entries = checkpoint_entries(config, results)
    train_tasks = tuple(config["train_tasks"])
    table = config.get("relations")
    listed = config.get("eval_sets")
    if listed is None or (not listed and table):
        listed = [e for rels in (table or {}).values() for sets in rels.values() for e in sets]
    eval_sets = tuple(dict.fromkeys(listed))
    if not eval_sets and config.get("eval_sets") is None:
        raise ValueError("eval_sets: give eval_sets (an empty list scores nothing) or a relations table")
    for name in train_tasks:
        if get_dataset(name).train_split is None:
            raise ValueError(f"train_tasks: dataset {name!r} has no training split")
    for name in eval_sets:
        if get_dataset(name).task.kind == "chat":
            raise ValueError(f"eval_sets: dataset {name!r} is a chat (instruction-tuning) dataset, not an eval set")
    for section in ("finetune", "data"):
        stray = [t for t in config[section].get("per_task", {}) if t not in train_tasks]
        if stray:
            raise ValueError(f"{section}.per_task: {stray} are not in train_tasks {list(train_tasks)}")
    named = config["aggregate"].get("learned_during_pretraining")
    unknown = [e for e in named or [] if e not in eval_sets]
    if unknown:
        raise ValueError(f"aggregate.learned_during_pretraining: {unknown} are not eval sets of the study")
    _check_shots(config, eval_sets)
    formats = {e: _formats(config, e) for e in eval_sets}
    pairs = relation_table(config, train_tasks, eval_sets)
    ev = config["evaluate"]

    names = tuple(e["name"] for e in entries)
    tuned = config["finetune"].get("checkpoints")
    if tuned is not None:
        unknown = [c for c in tuned if c not in names]
        if unknown:
            raise ValueError(f"finetune.checkpoints: {unknown} are not checkpoints of the suite {list(names)}")
    # A pre-trained checkpoint has no trained classifier head: it is not scored on a declared classification set.
    base_sets = [e for e in eval_sets if get_dataset(e).task.kind != declared.KIND]
    base = tuple(
        Model(c, evaluations=tuple(Evaluation(e, "pretraining", formats[e]) for e in base_sets), shots=ev["shots"])
        for c in names
    )
    _check_names(config)
    ft_configs = {t: _method_settings(config, t, _merged(config["finetune"], t)) for t in train_tasks}
    data_configs = {t: _merged(config["data"], t) for t in train_tasks}
    for t in train_tasks:
        for m in ft_configs[t]["methods"]:
            get_method(m).check_task(t, get_dataset(t).task.kind)
    select = config["finetune"].get("select_lr")
    if select is not None:
        select = {"metric": "loss", "evaluate": "selected", **select}
        heads = [t for t in train_tasks if get_dataset(t).task.kind == declared.KIND]
        if heads:  # its measures read the run's own model folder and summary
            raise ValueError(f"finetune.select_lr: not with classifier tasks {heads}; give their lrs per method "
                             f"(finetune.per_task.<task>.per_method) and keep the best epoch with snapshots "
                             f"(select: best_validation)")  # fmt: skip
    runs, evaluated = [], []
    for t, m, starts in _starts(config, ft_configs, data_configs):
        ft = method_config(ft_configs[t], m)
        # finetune.checkpoints, or the task's own (finetune.per_task.<task>.checkpoints)
        tuned = ft_configs[t].get("checkpoints")
        unknown = [c for c in tuned or [] if c not in names]
        if unknown:
            raise ValueError(f"finetune.per_task.{t}.checkpoints: {unknown} are not checkpoints of the suite "
                             f"{list(names)}")  # fmt: skip
        checkpoints = names if tuned is None else [n for n in names if n in tuned]
        evaluations = tuple(Evaluation(e, rel, formats[e]) for e, rel in pairs[t])
        shots = ev["finetuned_shots"] if _check_heads(t, [e.eval_set for e in evaluations]) else 0
        trajectory = bool(ft.get("snapshots")) and ft["snapshots"]["trajectory"]
        for start in starts:
            for c in checkpoints:
                for s in ft["seeds"]:
                    for parent in _parents(runs, start, c, int(s)):
                        for n in _sizes(data_configs[t], t):
                            keys = dict(train_size=n, parent=parent, snapshots=trajectory)
                            grid = [Model(c, t, m, float(lr), int(s), evaluations, shots, **keys)
                                    for lr in ft["lrs"]]  # fmt: skip
                            runs += grid
                            if not evaluations:
                                continue
                            if select and select["evaluate"] == "selected":
                                evaluated.append(Model(c, t, m, None, int(s), evaluations, shots, True,
                                                       **keys))  # fmt: skip
                            else:
                                evaluated += grid
    # Checkpoint by checkpoint, as the suite lists them (the loop above goes parent tasks first).
    order = {c: i for i, c in enumerate(names)}
    runs.sort(key=lambda m: order[m.checkpoint])
    evaluated.sort(key=lambda m: order[m.checkpoint])
    for t in train_tasks:
        snapshots = ft_configs[t].get("snapshots") or {}
        if snapshots.get("steps") is not None and len(set(snapshots["steps"])) != len(snapshots["steps"]):
            raise ValueError(f"finetune.snapshots.steps (task {t!r}): {snapshots['steps']} lists a step twice")
        if snapshots.get("metric") == "score" and get_dataset(t).task.kind in ("text", "chat", "preference"):
            raise ValueError(f"finetune.snapshots.metric (task {t!r}): a {get_dataset(t).task.kind} dataset has no "
                             "score to select by; use loss")  # fmt: skip
        scored = (select or {}).get("metric") == "score" or snapshots.get("metric") == "score"
        sharded = [m for m in ft_configs[t]["methods"] if run_gpus(ft_configs[t], m) > 1]
        if scored and sharded:
            raise ValueError(f"finetune.gpus (task {t!r}, methods {sharded}): a run on several GPUs cannot score its "
                             "validation split (select_lr.metric or snapshots.metric: score generates, and the "
                             "sharded processes would have to stop generating together); select by loss, or give "
                             "the task gpus: 1")  # fmt: skip
    probe_sets = _probe_sets(config, ft_configs)
    dissect = config.get("dissect")
    if dissect is not None:
        task = dissect["train_task"]
        if task not in train_tasks or get_dataset(task).task.kind != "text":
            corpora = [t for t in train_tasks if get_dataset(t).task.kind == "text"]
            raise ValueError(f"dissect.train_task: {task!r} is not a plain-document corpus in train_tasks {corpora}")
        if not config.get("derive"):
            raise ValueError("dissect: needs a derive section (the variants it measures)")
    _check_mechanistic(config.get("mechanistic"), train_tasks, eval_sets, evaluated)
    return Plan(
        study=config["study"],
        suite=config["checkpoints"]["suite"],
        checkpoint_entries=entries,
        train_tasks=train_tasks,
        eval_sets=eval_sets,
        base_models=base,
        finetune_runs=tuple(evaluated),
        finetune_configs=ft_configs,
        data_configs=data_configs,
        training_runs=tuple(runs),
        select_lr=select,
        dissect_task=dissect and dissect["train_task"],
        score_settings={k: ev[k] for k in ("batch_size", "max_new_tokens", "stop", "rouge_stemmer")},
        root=f"{results}/{config['study']}",
        derive=bool(config.get("derive")),
        probe_sets=probe_sets,
        mechanistic=config.get("mechanistic"),
    )


def _first_format(eval_set: str) -> str:
    return next(iter(get_dataset(eval_set).task.formats))


def _check_mechanistic(block: dict | None, train_tasks: tuple[str, ...], eval_sets: tuple[str, ...],
                       runs: list[Model]) -> None:  # fmt: skip
    """The mechanistic section names datasets the study prepares and tasks it trains; raises naming the key."""
    if not block:
        return
    for part in ("layer_probes", "pruning"):
        sub = block.get(part)
        if sub is None:
            continue
        where = f"mechanistic.{part}"
        if sub["dataset"] not in train_tasks:
            raise ValueError(f"{where}.dataset: {sub['dataset']!r} is not in train_tasks {list(train_tasks)} "
                             "(its training split fits the probes or ranks the neurons)")  # fmt: skip
        scored = [sub["dataset"]] if part == "layer_probes" else sub.get("eval_sets") or [sub["dataset"]]
        key = f"{where}.dataset" if part == "layer_probes" or not sub.get("eval_sets") else f"{where}.eval_sets"
        for e in scored:
            if e not in eval_sets:
                raise ValueError(f"{key}: {e!r} is not an eval set of the study {list(eval_sets)}")
        unknown = [t for t in sub.get("tasks") or [] if t not in train_tasks]
        if unknown:
            raise ValueError(f"{where}.tasks: {unknown} are not in train_tasks {list(train_tasks)}")
        if get_dataset(sub["dataset"]).task.kind == declared.KIND:
            raise ValueError(f"{where}.dataset: {sub['dataset']!r} is scored by a classifier head; the mechanistic "
                             "analyses read a causal language model's answer")  # fmt: skip
    reverse = block.get("reverse")
    if reverse is not None:
        if reverse["eval_set"] not in eval_sets:
            raise ValueError(f"mechanistic.reverse.eval_set: {reverse['eval_set']!r} is not an eval set of the study")
        if not any(m.parent is not None for m in runs):
            raise ValueError("mechanistic.reverse: no run starts from another run (finetune.per_task.<task>.from), "
                             "so there is no reverse fine-tuning to measure")  # fmt: skip
        unknown = [t for t in reverse.get("tasks") or [] if t not in train_tasks]
        if unknown:
            raise ValueError(f"mechanistic.reverse.tasks: {unknown} are not in train_tasks {list(train_tasks)}")
        baseline = reverse.get("baseline_checkpoint")
        if baseline is not None and not any(m.checkpoint == baseline for m in runs):
            named = sorted({m.checkpoint for m in runs})
            raise ValueError(f"mechanistic.reverse.baseline_checkpoint: no run starts from checkpoint {baseline!r} "
                             f"(the runs' checkpoints: {named})")  # fmt: skip


def _check_heads(task: str, eval_sets: list[str]) -> bool:
    """Whether ``task``'s models read prompts (False: a classifier head, scored zero-shot by its head).

    A classifier is scored only on sets of a label set of its head's size, and a language model on
    none of them; either mismatch names the task and the sets.
    """
    kind = get_dataset(task).task.kind
    heads = [e for e in eval_sets if get_dataset(e).task.kind == declared.KIND]
    if kind != declared.KIND:
        if heads:
            raise ValueError(f"relations.{task}: {heads} are scored by a classifier head, which a model fine-tuned "
                             f"on {task!r} ({kind}) does not have")  # fmt: skip
        return True
    size = len(get_dataset(task).task.labels)
    other = [e for e in eval_sets if e not in heads or len(get_dataset(e).task.labels) != size]
    if other:
        raise ValueError(f"relations.{task}: {other} are not classification sets of {size} labels like {task!r}; "
                         f"its models are scored by their {size}-class head")  # fmt: skip
    return False


def _probe_sets(config: dict, ft_configs: dict) -> dict:
    """The study's probe sets, each checked (``ptft.probes.build.complete_config``), and every
    ``finetune.probes.set`` naming one of them."""
    from ptft.probes.build import complete_config

    blocks = config.get("probe_sets") or {}
    sets = {name: complete_config(block, name) for name, block in blocks.items()}
    for name, block in sets.items():
        if block["task"] not in config["train_tasks"]:
            raise ValueError(f"probe_sets.{name}.task: {block['task']!r} is not in train_tasks {config['train_tasks']}")
        model = (block.get("initial") or {}).get("model")
        if "initial" in block["types"] and model is None:
            raise ValueError(f"probe_sets.{name}.initial.model: the model that samples the initial responses (a "
                             "checkpoint of the suite, a folder or a hub id)")  # fmt: skip
    for task, ft in ft_configs.items():
        name = (ft.get("probes") or {}).get("set")
        if name is not None and name not in sets:
            raise ValueError(f"finetune.probes.set (task {task!r}): no probe set {name!r} in probe_sets "
                             f"{sorted(sets)}")  # fmt: skip
        if name is not None and (ft["probes"] or {}).get("path"):
            raise ValueError(f"finetune.probes (task {task!r}): give set or path, not both")
    return sets
