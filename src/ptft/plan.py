"""The experiment plan: one pure function of the config that lists every job of a study.

The Snakefile asks this module for its targets; tests check the plan without Snakemake.
Paths of models and their outputs are built here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptft.data.registry import get_dataset

BASE = "base"
NO_TASK = "none"


def format_lr(lr: float) -> str:
    return f"{lr:g}"


def relation(train_task: str, eval_set: str) -> str:
    """How an eval set relates to the task a model was fine-tuned on.

    ``pretraining`` for base checkpoints (the model has seen pre-training only); ``in-domain``
    for the training task's own test set; ``ood`` for another dataset of the same task type;
    ``cross-task`` for a dataset of another task type.
    """
    if train_task == NO_TASK:
        return "pretraining"
    if train_task == eval_set:
        return "in-domain"
    if get_dataset(train_task).task_type == get_dataset(eval_set).task_type:
        return "ood"
    return "cross-task"


@dataclass(frozen=True)
class Model:
    """A model to evaluate: a base checkpoint or one fine-tuning run of it."""

    checkpoint: str
    train_task: str = NO_TASK
    method: str = BASE
    lr: float | None = None
    seed: int | None = None
    eval_sets: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_base(self) -> bool:
        return self.method == BASE

    @property
    def id(self) -> str:
        if self.is_base:
            return f"base/{self.checkpoint}"
        return f"ft/{self.checkpoint}/{self.train_task}/{self.method}/lr{format_lr(self.lr)}/seed{self.seed}"

    def metadata(self, shots: int) -> dict:
        return {
            "model": self.id,
            "checkpoint": self.checkpoint,
            "train_task": self.train_task,
            "method": self.method,
            "lr": self.lr,
            "seed": self.seed,
            "shots": shots,
        }


@dataclass(frozen=True)
class Plan:
    study: str
    checkpoints: tuple[str, ...]
    train_tasks: tuple[str, ...]
    eval_sets: tuple[str, ...]
    formats: tuple[str, ...]
    finetune_runs: tuple[Model, ...]

    @property
    def base_models(self) -> tuple[Model, ...]:
        return tuple(Model(c, eval_sets=self.eval_sets) for c in self.checkpoints)

    @property
    def models(self) -> tuple[Model, ...]:
        return self.base_models + self.finetune_runs

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.train_tasks + self.eval_sets))


def checkpoint_names(config: dict) -> tuple[str, ...]:
    from ptft.checkpoints.suite import checkpoint_name, save_steps

    ck = config["checkpoints"]
    if ck["suite"] == "toy":
        toy = ck["toy"]
        return tuple(checkpoint_name(s) for s in save_steps(toy["steps"], toy["n_checkpoints"], toy["first_step"]))
    raise ValueError(f"checkpoints.suite: unknown suite {ck['suite']!r}")


def build_plan(config: dict) -> Plan:
    """Every checkpoint × training task × method × lr × seed, and what each model is scored on."""
    checkpoints = checkpoint_names(config)
    train_tasks = tuple(config["train_tasks"])
    eval_sets = tuple(config["eval_sets"])
    for name in train_tasks:
        if get_dataset(name).train_split is None:
            raise ValueError(f"train_tasks: dataset {name!r} has no training split")
    for name in eval_sets:
        get_dataset(name)
    ft = config["finetune"]
    runs = tuple(
        Model(c, t, m, float(lr), int(s), eval_sets=eval_sets)
        for c in checkpoints
        for t in train_tasks
        for m in ft["methods"]
        for lr in ft["lrs"]
        for s in ft["seeds"]
    )
    return Plan(
        study=config["study"],
        checkpoints=checkpoints,
        train_tasks=train_tasks,
        eval_sets=eval_sets,
        formats=tuple(config["evaluate"]["formats"]),
        finetune_runs=runs,
    )
