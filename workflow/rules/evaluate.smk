rule evaluate_base:
    input:
        unpack(get_eval_inputs),
        model=get_checkpoint_input,
    output:
        f"{RESULTS}/eval/base/{{checkpoint}}/predictions.parquet",
    log:
        f"{RESULTS}/logs/evaluate/base/{{checkpoint}}.log",
    params:
        meta=get_base_model_meta,
        config=as_json(config["evaluate"]),
        eval_sets=PLAN.eval_sets,
        seed=config["seed"],
        data_dir=get_data_dir,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft evaluate --model-dir {input.model} --model {params.meta:q} --eval-sets {params.eval_sets} "
        "--data-dir {params.data_dir} --config {params.config:q} --seed {params.seed} --out {output} "
        "--threads {threads} > {log} 2>&1"


rule evaluate_finetuned:
    input:
        unpack(get_eval_inputs),
        model=f"{RESULTS}/finetune/{{checkpoint}}/{{task}}/{{method}}/lr{{lr}}/seed{{seed}}/model",
    output:
        f"{RESULTS}/eval/ft/{{checkpoint}}/{{task}}/{{method}}/lr{{lr}}/seed{{seed}}/predictions.parquet",
    log:
        f"{RESULTS}/logs/evaluate/ft/{{checkpoint}}/{{task}}/{{method}}/lr{{lr}}/seed{{seed}}.log",
    params:
        meta=get_finetuned_model_meta,
        config=as_json(config["evaluate"]),
        eval_sets=PLAN.eval_sets,
        seed=config["seed"],
        data_dir=get_data_dir,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft evaluate --model-dir {input.model} --model {params.meta:q} --eval-sets {params.eval_sets} "
        "--data-dir {params.data_dir} --config {params.config:q} --seed {params.seed} --out {output} "
        "--threads {threads} > {log} 2>&1"
