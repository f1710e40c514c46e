# Glue between Snakemake and the plan: every path and target comes from ptft.plan; the functions
# below only turn a job's wildcards into what the plan knows.
import json
import os
import re

from ptft.data.registry import get_dataset
from ptft.plan import EVALUATE_JOB_KEYS, build_plan

PLAN = build_plan(config)
TOY_SUITE = PLAN.suite == "toy"
PCFG_SUITE = PLAN.suite == "pcfg"

# Local checkpoint folders are the user's and exist before any job runs: an incomplete one stops the dry run.
if PLAN.suite == "local":
    from ptft.checkpoints.load import check_folder

    for entry in PLAN.checkpoint_entries:
        check_folder(entry["path"], f"checkpoint {entry['name']!r} (checkpoints.local)")


# A run's folder under finetune/ (ptft.plan.Model.run): folders ending in its seed's.
wildcard_constraints:
    checkpoint="[^/]+",
    run="(?:[^/]+/)+seed[0-9]+",
    dataset="[^/]+",
    size="[0-9]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def get_final_output():
    return PLAN.targets()


def get_download_output():
    """Everything `snakemake download` fetches: hub datasets and (non-toy) checkpoints."""
    out = [PLAN.raw_path(d) for d in PLAN.datasets if get_dataset(d).source == "hub"]
    if not PLAN.pretrained_here:
        out += [PLAN.checkpoint_path(c) for c in PLAN.checkpoints]
    return out


def get_checkpoint_input(wildcards):
    return PLAN.checkpoint_path(wildcards.checkpoint)


def get_checkpoint_entry(wildcards):
    entry = {e["name"]: e for e in PLAN.checkpoint_entries}[wildcards.checkpoint]
    return as_json(entry)


def get_revisions_source(_wildcards):
    from ptft.download import revisions_source

    return as_json(revisions_source(config))


def get_raw_input(wildcards):
    return PLAN.raw_path(wildcards.dataset)


def get_toy_held_out(wildcards):
    """A toy chat dataset avoids the test items of every other toy dataset of the study."""
    if get_dataset(wildcards.dataset).task.kind != "chat":
        return []
    return [PLAN.raw_path(d) for d in PLAN.eval_sets if get_dataset(d).source == "toy"]


def local_dir(dataset, input):
    """Where a prepare step reads split files: raw/ (toy), data.data_dir/<dataset>, or '' (the hub)."""
    from ptft.download import dataset_local_dir

    if get_dataset(dataset).source == "toy":
        return input[0]
    return dataset_local_dir(config["data"]["data_dir"], dataset) or ""


def get_local_dir(wildcards, input):
    return local_dir(wildcards.dataset, input)


def get_train_size(wildcards):
    """--size/--fraction of a task's training subsample; a size of its sweep, or the largest (validation)."""
    data = PLAN.data_configs[wildcards.dataset]
    if "size" in wildcards.keys():
        return f"--size {wildcards.size}"
    if data.get("train_fraction") is not None:
        return f"--fraction {data['train_fraction']}"
    return f"--size {max(data.get('train_sizes') or [data['train_size']])}"


def get_finetune_config(wildcards):
    run = PLAN.training_run(wildcards.run)
    return as_json(PLAN.run_config(run.train_task, run.method))


def evaluate_settings():
    """The evaluate section as its jobs get it, less how they run (gpus: their resources)."""
    return {k: v for k, v in config["evaluate"].items() if k not in EVALUATE_JOB_KEYS}


def get_finetune_gpus(wildcards):
    run = PLAN.training_run(wildcards.run)
    return PLAN.gpus(run.train_task, run.method)


def get_run_args(wildcards):
    run = PLAN.training_run(wildcards.run)
    return f"--task {run.train_task} --method {run.method} --lr {run.lr!r} --seed {run.seed}"


def get_finetune_inputs(wildcards):
    run = PLAN.training_run(wildcards.run)
    inputs = {"checkpoint": PLAN.start_path(run), "train": PLAN.train_data_path(run.train_task, run.train_size)}
    if PLAN.needs_validation(run.train_task):
        inputs["validation"] = PLAN.data_path("validation", run.train_task)
    if PLAN.probe_set_input(run.train_task):
        inputs["probes"] = PLAN.probe_set_input(run.train_task)
    return inputs


def get_probe_set_inputs(wildcards):
    """A probe set's training records, test split, and the suite checkpoint that samples its initial responses."""
    block = PLAN.probe_sets[wildcards.probe_set]
    inputs = {"train": PLAN.data_path("train", block["task"]), "test": PLAN.data_path("eval", block["task"])}
    model = (block.get("initial") or {}).get("model") if "initial" in block["types"] else None
    if model in PLAN.checkpoints:
        inputs["initial"] = PLAN.checkpoint_path(model)
    return inputs


def get_probe_set_initial(wildcards, input):
    """--initial-model: the suite checkpoint's path, or the folder or hub id the study names."""
    block = PLAN.probe_sets[wildcards.probe_set]
    if "initial" not in block["types"]:
        return ""
    return f"--initial-model {input.initial if 'initial' in input.keys() else block['initial']['model']!r}"


def get_validation_arg(_wildcards, input):
    return f"--validation {input.validation}" if "validation" in input.keys() else ""


def get_run_dir(wildcards):
    return PLAN.run_dir(wildcards.run)


def get_state_dir(wildcards):
    return PLAN.state_dir(wildcards.run)


def snapshot_runs_pattern(keep):
    """The runs that save snapshots (kept or not): a regular expression of their folders."""
    runs = [m for m in PLAN.training_runs if m.snapshots]
    runs = [m for m in runs if PLAN.finetune_configs[m.train_task]["snapshots"]["keep"] == keep]
    return "|".join(re.escape(m.run) for m in runs)


def get_grid_summaries(wildcards):
    return [PLAN.run_file(m.run, "summary") for m in PLAN.grid_runs(PLAN.training_run(wildcards.run))]


def get_grid_group(wildcards):
    m = PLAN.training_run(wildcards.run)
    keys = {"checkpoint": m.checkpoint, "task": m.train_task, "method": m.method, "seed": m.seed}
    return as_json({**keys, "train_size": m.train_size, "parent": m.parent and m.parent.id})


def get_select_metric(_wildcards):
    return PLAN.select_lr["metric"]


def get_all_selections(_wildcards):
    return [PLAN.selection_path(m.run) for m in PLAN.selections()]


def get_model(wildcards):
    """The plan's model of an evaluation job: a base checkpoint, a run, or a selection."""
    if "run" in wildcards.keys():
        return PLAN.training_run(wildcards.run)
    return PLAN.model(f"base/{wildcards.checkpoint}")


def get_eval_model(wildcards):
    """What a fine-tuned model's evaluation reads: the run's model, or the lr selection's pointer."""
    model = get_model(wildcards)
    return PLAN.selection_path(model.run) if model.selected else PLAN.run_file(model.run, "model")


def get_start_input(wildcards):
    """The model a run started from: its parent run's model, or its pre-training checkpoint."""
    return PLAN.start_path(get_model(wildcards))


def get_validation_input(wildcards):
    return PLAN.data_path("validation", get_model(wildcards).train_task)


def get_summary_input(wildcards):
    return PLAN.run_file(get_model(wildcards).run, "summary")


def get_max_length(wildcards):
    model = get_model(wildcards)
    return PLAN.run_config(model.train_task, model.method)["max_length"]


def get_trajectory_inputs(wildcards):
    """A run's snapshots; for an lr selection, every run's of its grid (the pointer says which is read)."""
    model = get_model(wildcards)
    if not model.selected:
        return {"model": PLAN.run_file(model.run, "snapshots")}
    grid = [PLAN.run_file(m.run, "snapshots") for m in PLAN.grid_runs(model)]
    return {"model": PLAN.selection_path(model.run), "grid": grid}


def get_eval_inputs(wildcards):
    sets = get_model(wildcards).eval_sets
    return {
        "eval": [PLAN.data_path("eval", s) for s in sets],
        "fewshot": [PLAN.data_path("fewshot", s) for s in sets],
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
    # A model scored on nothing (a checkpoint of a study whose sets need a trained classifier head) has none.
    return [PLAN.predictions_path(m.id) for m in PLAN.models if m.evaluations]


def get_all_trajectories(_wildcards):
    return [PLAN.trajectory_path(m.id) for m in PLAN.snapshot_runs]


def get_base_predictions(_wildcards):
    return [PLAN.predictions_path(m.id) for m in PLAN.base_models if m.evaluations]


def get_input_args(_wildcards, input):
    """``--input NAME FILES...`` for each named input of a job (an analysis's inputs differ by analysis)."""
    files = {name: input.get(name) for name in input.keys()}
    return " ".join(f"--input {name} " + " ".join(f if isinstance(f, list) else [f]) for name, f in files.items())


def get_report_caption(wildcards):
    return next(i.caption for i in PLAN.report_items() if (i.kind, i.name) == ("table", wildcards.table))


def get_corpus_input(_wildcards):
    """A registered corpus's raw split files: generated (toy) or fetched (hub) first."""
    name = config["derive"]["corpus"].get("dataset")
    return PLAN.raw_path(name) if name else []


def get_corpus_local_dir(_wildcards, input):
    name = config["derive"]["corpus"].get("dataset")
    return local_dir(name, input) if name else ""


def template_path(path):
    """A template path as given if it exists here (the working directory), else in the workflow's root."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.relpath(os.path.join(workflow.basedir, path))


def get_derive_config():
    """What the derive job's result depends on (the corpus is its input file)."""
    return as_json({k: v for k, v in config["derive"].items() if k != "corpus"})


def get_dissect_model_dir(wildcards):
    if wildcards.kind == "base":
        return PLAN.checkpoint_path(wildcards.model)
    return PLAN.run_file(wildcards.model, "model")


def get_dissect_snapshots(wildcards):
    return PLAN.run_file(wildcards.run, "snapshots")


def get_dissect_batch_size(_wildcards):
    return config["dissect"]["batch_size"]


def dissect_tuned():
    return [m for m in PLAN.dissect_models if m.train_task == PLAN.dissect_task]


def get_dissect_loglik(_wildcards):
    out = [PLAN.dissect_path(m.id) for m in PLAN.dissect_models]
    return out + [PLAN.dissect_trajectory_path(m.id) for m in dissect_tuned() if m.snapshots]


def get_dissect_pairs(_wildcards):
    """Each fine-tuned model (and its trajectory) with the model its change is measured from."""
    steps = {e["name"]: e.get("step") for e in PLAN.checkpoint_entries}
    pairs = []
    for m in dissect_tuned():
        meta = {**m.metadata(), "step": steps[m.checkpoint]}
        pair = {"meta": meta, "base": PLAN.dissect_path(PLAN.dissect_start(m).id), "ft": PLAN.dissect_path(m.id)}
        pairs.append(pair)
        if m.snapshots:
            pairs.append({**pair, "ft": PLAN.dissect_trajectory_path(m.id)})
    return as_json(pairs)


# Every output records the study config it was made under (ptft.provenance): the jobs' shell
# commands inherit this process's environment, and a SLURM job re-reads this file and sets it again.
from ptft.provenance import CONFIG_ENV, config_sha256

os.environ[CONFIG_ENV] = config_sha256(config)

# torch.compile's kernels in one folder for every study and job, not each node's /tmp (ptft.compile_cache).
from ptft import compile_cache

compile_cache.share(os.path.dirname(PLAN.root))


# The mechanistic section's per-model jobs (workflow/rules/mechanistic.smk).
def get_probe_inputs(_wildcards):
    dataset = config["mechanistic"]["layer_probes"]["dataset"]
    return {"train": PLAN.data_path("train", dataset), "test": PLAN.data_path("eval", dataset)}


def get_pruning_inputs(_wildcards):
    sets = [e["eval_set"] for e in PLAN.pruning_evaluations()]
    return {
        "train": PLAN.data_path("train", config["mechanistic"]["pruning"]["dataset"]),
        "eval": [PLAN.data_path("eval", s) for s in sets],
    }
