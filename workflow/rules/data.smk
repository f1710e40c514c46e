rule prepare_train:
    input:
        f"{RESULTS}/raw/{{dataset}}",
    output:
        f"{RESULTS}/data/train/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/prepare_train/{{dataset}}.log",
    params:
        size=config["data"]["train_size"],
        seed=config["data"]["subsample_seed"],
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft prepare-train --dataset {wildcards.dataset} --dataset-dir {input} --size {params.size} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule prepare_eval:
    input:
        f"{RESULTS}/raw/{{dataset}}",
    output:
        scored=f"{RESULTS}/data/eval/{{dataset}}.parquet",
        fewshot=f"{RESULTS}/data/fewshot/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/prepare_eval/{{dataset}}.log",
    params:
        max_examples=as_json(config["data"]["max_eval_examples"]),
        pool=config["data"]["fewshot_pool_size"],
        seed=config["data"]["subsample_seed"],
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft prepare-eval --dataset {wildcards.dataset} --dataset-dir {input} "
        "--max-examples {params.max_examples:q} --pool-size {params.pool} --seed {params.seed} "
        "--out-eval {output.scored} --out-fewshot {output.fewshot} > {log} 2>&1"
