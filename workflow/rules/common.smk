import json
import os

from ptft.plan import build_plan, format_lr

PLAN = build_plan(config)
RESULTS = f"results/{config['study']}"
STATE = f"{RESULTS}/.state"


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def get_final_output():
    return [
        f"{RESULTS}/tables/performance.parquet",
        f"{RESULTS}/tables/change_per_checkpoint.parquet",
        f"{RESULTS}/figures/base_vs_finetuned.png",
        f"{RESULTS}/figures/average_change.png",
    ]


def get_checkpoint_dir(checkpoint):
    return f"{RESULTS}/checkpoints/{checkpoint}"


def get_checkpoint_input(wildcards):
    return get_checkpoint_dir(wildcards.checkpoint)


def get_finetune_state_dir(wildcards):
    """Resumable training state lives outside the rule's outputs, which Snakemake deletes on re-runs."""
    return get_finetuned_dir(wildcards).replace(RESULTS, STATE, 1)


def get_finetuned_dir(wildcards):
    return f"{RESULTS}/finetune/{wildcards.checkpoint}/{wildcards.task}/{wildcards.method}/lr{wildcards.lr}/seed{wildcards.seed}"


def get_eval_inputs(_wildcards):
    return {
        "eval": expand(f"{RESULTS}/data/eval/{{name}}.parquet", name=PLAN.eval_sets),
        "fewshot": expand(f"{RESULTS}/data/fewshot/{{name}}.parquet", name=PLAN.eval_sets),
    }


def get_base_model_meta(wildcards):
    from ptft.plan import Model

    return as_json(Model(wildcards.checkpoint).metadata(config["evaluate"]["shots"]))


def get_finetuned_model_meta(wildcards):
    from ptft.plan import Model

    model = Model(wildcards.checkpoint, wildcards.task, wildcards.method, float(wildcards.lr), int(wildcards.seed))
    return as_json(model.metadata(0))


def get_parent_dir(_wildcards, output):
    """The folder of a rule's first output, for commands that write several files into it."""
    return os.path.dirname(output[0])


def get_data_dir(_wildcards, input):
    """results/<study>/data, the parent of the eval/ and fewshot/ folders of the inputs."""
    return os.path.dirname(os.path.dirname(input.eval[0]))


def get_all_predictions(_wildcards):
    return [f"{RESULTS}/eval/{m.id}/predictions.parquet" for m in PLAN.models]
