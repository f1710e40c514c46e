# Base checkpoints and fine-tuned models differ only in where the model comes from. Each job's
# finished (eval set, format) parts wait in its state directory (outside the outputs, which
# Snakemake deletes before a re-run) until predictions.parquet is written.
EVALUATE_PARAMS = dict(
    meta=get_model_meta,
    evaluations=get_evaluations,
    config=as_json(config["evaluate"]),
    seed=config["seed"],
    data_dir=get_data_dir,
)
EVALUATE_SHELL = (
    "exec ptft evaluate --model-dir {input.model} --model {params.meta:q} --evaluations {params.evaluations:q} "
    "--data-dir {params.data_dir} --config {params.config:q} --seed {params.seed} --out {output} "
    "--state-dir {params.state} --threads {threads} > {log} 2>&1"
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
    params:
        **EVALUATE_PARAMS,
        state=PLAN.state_path("evaluate/base/{checkpoint}"),
    shell:
        EVALUATE_SHELL


rule evaluate_finetuned:
    input:
        unpack(get_eval_inputs),
        model=rules.finetune.output.model,
    output:
        PLAN.predictions_path(f"ft/{RUN}"),
    log:
        PLAN.log_path(f"evaluate/ft/{RUN}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        **EVALUATE_PARAMS,
        state=PLAN.state_path(f"evaluate/ft/{RUN}"),
    shell:
        EVALUATE_SHELL


rule evaluate_selected:
    input:
        unpack(get_eval_inputs),
        model=rules.select_lr.output[0],
    output:
        PLAN.predictions_path(f"ft/{SELECTED_RUN}"),
    log:
        PLAN.log_path(f"evaluate/ft/{SELECTED_RUN}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        **EVALUATE_PARAMS,
        state=PLAN.state_path(f"evaluate/ft/{SELECTED_RUN}"),
    shell:
        EVALUATE_SHELL
