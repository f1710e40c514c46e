# Base checkpoints and fine-tuned models differ only in where the model comes from.
EVALUATE_PARAMS = dict(
    meta=get_model_meta,
    evaluations=get_evaluations,
    config=as_json(config["evaluate"]),
    seed=config["seed"],
    data_dir=get_data_dir,
)
EVALUATE_SHELL = (
    "ptft evaluate --model-dir {input.model} --model {params.meta:q} --evaluations {params.evaluations:q} "
    "--data-dir {params.data_dir} --config {params.config:q} --seed {params.seed} --out {output} "
    "--threads {threads} > {log} 2>&1"
)


rule evaluate_base:
    input:
        unpack(get_eval_inputs),
        model=get_checkpoint_input,
    output:
        f"{RESULTS}/eval/base/{{checkpoint}}/predictions.parquet",
    log:
        f"{RESULTS}/logs/evaluate/base/{{checkpoint}}.log",
    params:
        **EVALUATE_PARAMS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ptft.yaml"
    shell:
        EVALUATE_SHELL


rule evaluate_finetuned:
    input:
        unpack(get_eval_inputs),
        model=f"{RESULTS}/finetune/{RUN}/model",
    output:
        f"{RESULTS}/eval/ft/{RUN}/predictions.parquet",
    log:
        f"{RESULTS}/logs/evaluate/ft/{RUN}.log",
    params:
        **EVALUATE_PARAMS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ptft.yaml"
    shell:
        EVALUATE_SHELL


rule evaluate_selected:
    input:
        unpack(get_eval_inputs),
        model=f"{RESULTS}/finetune/{SELECTED}.json",
    output:
        f"{RESULTS}/eval/ft/{SELECTED}/predictions.parquet",
    log:
        f"{RESULTS}/logs/evaluate/ft/{SELECTED}.log",
    params:
        **EVALUATE_PARAMS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ptft.yaml"
    shell:
        EVALUATE_SHELL
