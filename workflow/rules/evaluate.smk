# Base checkpoints and fine-tuned models differ only in where the model comes from. Each job's
# finished (eval set, format) parts wait in its state directory (outside the outputs, which
# Snakemake deletes before a re-run) until predictions.parquet is written. gpu: evaluate.gpus, as
# resources (not in the scoring settings) so that changing it re-runs nothing.
EVALUATE_PARAMS = dict(
    meta=get_model_meta,
    evaluations=get_evaluations,
    config=as_json(evaluate_settings()),
    seed=config["seed"],
    data_dir=get_data_dir,
)
EVALUATE_SHELL = (
    "exec ptft evaluate --model-dir {input.model} --model {params.meta:q} --evaluations {params.evaluations:q} "
    "--data-dir {params.data_dir} --config {params.config:q} --seed {params.seed} --out {output} "
    "--state-dir {params.state} --threads {threads} --gpus {resources.gpu} > {log} 2>&1"
)


rule evaluate_base:
    input:
        unpack(get_eval_inputs),
        model=get_checkpoint_input,
    output:
        PLAN.predictions_path("base/{checkpoint}"),
    log:
        PLAN.log_path("evaluate/base/{checkpoint}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=config["evaluate"]["gpus"],
        nodes=1,
    params:
        **EVALUATE_PARAMS,
        state=PLAN.state_path("evaluate/base/{checkpoint}"),
    shell:
        EVALUATE_SHELL


rule evaluate_finetuned:
    input:
        unpack(get_eval_inputs),
        model=get_eval_model,
    output:
        PLAN.predictions_path("ft/{run}"),
    log:
        PLAN.log_path("evaluate/ft/{run}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=config["evaluate"]["gpus"],
        nodes=1,
    params:
        **EVALUATE_PARAMS,
        state=PLAN.state_path("evaluate/ft/{run}"),
    shell:
        EVALUATE_SHELL


# Every snapshot of a run's trajectory, scored as its final model is (finetune.snapshots).
rule evaluate_trajectory:
    input:
        unpack(get_eval_inputs),
        unpack(get_trajectory_inputs),
    output:
        PLAN.trajectory_path("ft/{run}"),
    log:
        PLAN.log_path("evaluate/trajectory/{run}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=config["evaluate"]["gpus"],
        nodes=1,
    params:
        **EVALUATE_PARAMS,
        state=PLAN.state_path("evaluate/trajectory/{run}"),
    shell:
        EVALUATE_SHELL.replace("ptft evaluate", "ptft evaluate --trajectory")


# What the LP-FT study measures of a fine-tuned classifier (a declared classification task): calibration
# before and after temperature scaling on its validation split, feature change from its starting model.
rule measure_classifier:
    input:
        unpack(get_eval_inputs),
        model=get_eval_model,
        start=get_start_input,
        validation=get_validation_input,
        summary=get_summary_input,
    output:
        measures=PLAN.classifier_measures_path("ft/{run}"),
        reliability=PLAN.reliability_path("ft/{run}"),
    log:
        PLAN.log_path("measure_classifier/ft/{run}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        meta=get_model_meta,
        evaluations=get_evaluations,
        data_dir=get_data_dir,
        max_length=get_max_length,
    shell:
        "ptft measure-classifier --model-dir {input.model} --start {input.start} --validation {input.validation} "
        "--data-dir {params.data_dir} --model {params.meta:q} --evaluations {params.evaluations:q} "
        "--summary {input.summary} --max-length {params.max_length} --out {output.measures} "
        "--reliability {output.reliability} --threads {threads} > {log} 2>&1"
