import json
import os

from ptft.data.registry import get_dataset
from ptft.plan import build_plan

PLAN = build_plan(config)
RESULTS = f"results/{config['study']}"
STATE = f"{RESULTS}/.state"
TOY_SUITE = PLAN.suite == "toy"
HUB_DATASETS = [d for d in PLAN.datasets if get_dataset(d).source == "hub"]
RUN = "{checkpoint}/{task}/{method}/lr{lr}/seed{seed}"
SELECTED = "{checkpoint}/{task}/{method}/selected/seed{seed}"


wildcard_constraints:
    checkpoint="[^/]+",
    task="[^/]+",
    method="[^/]+",
    lr="[^/]+",
    seed="[0-9]+",
    dataset="[^/]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


# The report's categories, one per analysis, each with its figures and tables.
ANALYSES = {
    "performance": "Performance across checkpoints",
    "change": "Change after fine-tuning",
    "transfer": "Transfer: OOD and cross-task",
    "formats": "Prompt formats",
    "dynamics": "Learning dynamics",
    "dissect": "Dissecting: what fine-tuning changes",
}
# Tables shown in the report, by analysis; each has its caption in workflow/report/table.rst.
REPORT_TABLES = {
    "performance": ["performance"],
    "change": ["change_per_checkpoint", "change_slope", "learned_during_pretraining"],
    "transfer": ["mrc"],
    "formats": ["format_sensitivity", "format_sensitivity_per_checkpoint"],
}
DERIVE = config.get("derive")
DISSECT_MODELS = PLAN.dissect_models
if DERIVE:
    REPORT_TABLES["dissect"] = ["derive_stats"] + (["dissect_change", "dissect_components"] if DISSECT_MODELS else [])
ALL_REPORT_TABLES = [t for tables in REPORT_TABLES.values() for t in tables]


# Relations with a figure of their own (the fine-tuned models of that relation per eval set).
FIGURE_RELATIONS = [r for r in ("ood", "cross-task") if r in {row["relation"] for row in PLAN.relation_rows()}]
# Eval sets scored in more than one prompt format, for the format-sensitivity figure.
FORMAT_EVAL_SETS = [e.eval_set for e in (PLAN.base_models[0].evaluations if PLAN.base_models else ()) if len(e.formats) > 1]
# Training runs that log learning-dynamics probes, and their (task, method) figures.
PROBE_RUNS = [m for m in PLAN.training_runs if PLAN.finetune_configs[m.train_task].get("probes")]
PROBE_FIGURES = list(dict.fromkeys((m.train_task, m.method) for m in PROBE_RUNS))


def figure_paths(names):
    """PNG and SVG of each figure name under figures/."""
    return [f"{RESULTS}/figures/{n}.{ext}" for n in names for ext in ("png", "svg")]


def get_final_output():
    return (
        expand(f"{RESULTS}/report/{{table}}.html", table=ALL_REPORT_TABLES)
        + expand(f"{RESULTS}/tables/{{table}}.parquet", table=ALL_REPORT_TABLES)
        + figure_paths(["base_vs_finetuned", "average_change"])
        + figure_paths([r.replace("-", "_") for r in FIGURE_RELATIONS])
        + figure_paths(["format_sensitivity"] if FORMAT_EVAL_SETS else [])
        + figure_paths([f"learning_dynamics_{t}_{m}" for t, m in PROBE_FIGURES])
        + figure_paths(["dissecting"] if DISSECT_MODELS else [])
    )


def get_probe_runs(_wildcards):
    return as_json([{"checkpoint": m.checkpoint, "task": m.train_task, "method": m.method, "lr": m.lr,
                     "seed": m.seed, "path": f"{RESULTS}/finetune/{m.id.removeprefix('ft/')}/probes.parquet"}
                    for m in PROBE_RUNS])  # fmt: skip


def get_download_output():
    """Everything `snakemake download` fetches: hub datasets and (non-toy) checkpoints."""
    out = expand(f"{RESULTS}/downloads/{{name}}.json", name=HUB_DATASETS)
    if not TOY_SUITE:
        out += [get_checkpoint_path(c) for c in PLAN.checkpoints]
    return out


def get_checkpoint_path(checkpoint):
    """A toy checkpoint's folder, or the pointer that pins a hub/local checkpoint."""
    if TOY_SUITE:
        return f"{RESULTS}/checkpoints/{checkpoint}"
    return f"{RESULTS}/checkpoints/{checkpoint}.json"


def get_checkpoint_input(wildcards):
    return get_checkpoint_path(wildcards.checkpoint)


def get_checkpoint_entry(wildcards):
    entry = {e["name"]: e for e in PLAN.checkpoint_entries}[wildcards.checkpoint]
    return as_json(entry)


def get_revisions_source(_wildcards):
    from ptft.download import revisions_source

    return as_json(revisions_source(config))


def get_raw_input(wildcards):
    """Toy datasets are generated into raw/; hub datasets are fetched (on the login node) first."""
    if get_dataset(wildcards.dataset).source == "toy":
        return f"{RESULTS}/raw/{wildcards.dataset}"
    return f"{RESULTS}/downloads/{wildcards.dataset}.json"


def get_toy_held_out(wildcards):
    """A toy chat dataset avoids the test items of every other toy dataset of the study."""
    if get_dataset(wildcards.dataset).task.kind != "chat":
        return []
    return [f"{RESULTS}/raw/{d}" for d in PLAN.eval_sets if get_dataset(d).source == "toy"]


def get_local_dir(wildcards, input):
    """Where the prepare step reads split files: raw/ (toy), data.data_dir/<dataset>, or '' (the hub)."""
    from ptft.download import dataset_local_dir

    if get_dataset(wildcards.dataset).source == "toy":
        return input[0]
    return dataset_local_dir(config["data"]["data_dir"], wildcards.dataset) or ""


def get_train_size(wildcards):
    data = PLAN.data_configs[wildcards.dataset]
    if data.get("train_fraction") is not None:
        return f"--fraction {data['train_fraction']}"
    return f"--size {data['train_size']}"


def get_finetune_config(wildcards):
    return as_json(PLAN.run_config(wildcards.task, wildcards.method))


def get_finetune_inputs(wildcards):
    inputs = {
        "checkpoint": get_checkpoint_path(wildcards.checkpoint),
        "train": f"{RESULTS}/data/train/{wildcards.task}.parquet",
    }
    if PLAN.select_lr:
        inputs["validation"] = f"{RESULTS}/data/validation/{wildcards.task}.parquet"
    return inputs


def get_validation_arg(_wildcards, input):
    return f"--validation {input.validation}" if "validation" in input.keys() else ""


def get_grid_summaries(wildcards):
    runs = PLAN.grid_runs(wildcards.checkpoint, wildcards.task, wildcards.method, int(wildcards.seed))
    return [f"{RESULTS}/finetune/{m.id.removeprefix('ft/')}/summary.json" for m in runs]


def get_grid_group(wildcards):
    keys = ("checkpoint", "task", "method")
    return as_json({**{k: wildcards[k] for k in keys}, "seed": int(wildcards.seed)})


def get_all_selections(_wildcards):
    return [f"{RESULTS}/finetune/{SELECTED.format(checkpoint=c, task=t, method=m, seed=s)}.json"
            for c, t, m, s in PLAN.selection_groups()]


def get_finetuned_dir(wildcards):
    run = RUN.format(**wildcards)
    return f"{RESULTS}/finetune/{run}"


def get_finetune_state_dir(wildcards):
    """Resumable training state lives outside the rule's outputs, which Snakemake deletes on re-runs."""
    return get_finetuned_dir(wildcards).replace(RESULTS, STATE, 1)


def get_model(wildcards):
    if "lr" in wildcards.keys():
        return PLAN.model(f"ft/{RUN.format(**wildcards)}")
    if "task" in wildcards.keys():
        return PLAN.model(f"ft/{SELECTED.format(**wildcards)}")
    return PLAN.model(f"base/{wildcards.checkpoint}")


def get_eval_inputs(wildcards):
    sets = get_model(wildcards).eval_sets
    return {
        "eval": expand(f"{RESULTS}/data/eval/{{name}}.parquet", name=sets),
        "fewshot": expand(f"{RESULTS}/data/fewshot/{{name}}.parquet", name=sets),
    }


def get_model_meta(wildcards):
    return as_json(get_model(wildcards).metadata())


def get_evaluations(wildcards):
    return as_json([e.as_dict() for e in get_model(wildcards).evaluations])


def get_parent_dir(_wildcards, output):
    """The folder of a rule's first output, for commands that write several files into it."""
    return os.path.dirname(output[0])


def get_data_dir(_wildcards, input):
    """results/<study>/data, the parent of the eval/ and fewshot/ folders of the inputs."""
    return os.path.dirname(os.path.dirname(input.eval[0]))


def get_all_predictions(_wildcards):
    return [f"{RESULTS}/eval/{m.id}/predictions.parquet" for m in PLAN.models]


def get_corpus_input(_wildcards):
    """A registered corpus's raw split files: generated (toy) or fetched (hub) first."""
    name = DERIVE["corpus"].get("dataset")
    if not name:
        return []
    if get_dataset(name).source == "toy":
        return f"{RESULTS}/raw/{name}"
    return f"{RESULTS}/downloads/{name}.json"


def get_corpus_local_dir(_wildcards, input):
    from ptft.download import dataset_local_dir

    name = DERIVE["corpus"].get("dataset")
    if not name:
        return ""
    if get_dataset(name).source == "toy":
        return input[0]
    return dataset_local_dir(config["data"]["data_dir"], name) or ""


def template_path(path):
    """A template path as given if it exists here (the working directory), else in the workflow's root."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.relpath(os.path.join(workflow.basedir, path))


def get_derive_config():
    """What the derive job's result depends on (the corpus is its input file)."""
    return as_json({k: v for k, v in DERIVE.items() if k != "corpus"})


def get_dissect_model_dir(wildcards):
    if wildcards.kind == "base":
        return get_checkpoint_path(wildcards.model)
    return f"{RESULTS}/finetune/{wildcards.model}/model"


def get_dissect_pairs(_wildcards):
    loglik = f"{RESULTS}/dissect/{{}}/loglik.parquet"
    steps = {e["name"]: e.get("step") for e in PLAN.checkpoint_entries}
    return as_json([{"meta": {**m.metadata(), "step": steps[m.checkpoint]}, "base": loglik.format(f"base/{m.checkpoint}"), "ft": loglik.format(m.id)}
                    for m in DISSECT_MODELS if not m.is_base])  # fmt: skip
