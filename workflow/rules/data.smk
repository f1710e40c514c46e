localrules:
    download_dataset,


rule toy_dataset:
    input:
        held_out=get_toy_held_out,
    output:
        directory(f"{RESULTS}/raw/{{dataset}}"),
    log:
        f"{RESULTS}/logs/toy_dataset/{{dataset}}.log",
    params:
        sizes=as_json(config["data"]["toy_sizes"]),
        seed=config["seed"],
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft toy-data --dataset {wildcards.dataset} --sizes {params.sizes:q} --seed {params.seed} "
        "--out-dir {output} --held-out {input.held_out} > {log} 2>&1"


rule download_dataset:
    output:
        f"{RESULTS}/downloads/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/download/dataset_{{dataset}}.log",
    params:
        data_dir=config["data"]["data_dir"] or "",
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft download --dataset {wildcards.dataset} --data-dir {params.data_dir:q} --out {output} > {log} 2>&1"


rule prepare_train:
    input:
        get_raw_input,
    output:
        f"{RESULTS}/data/train/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/prepare_train/{{dataset}}.log",
    params:
        local_dir=get_local_dir,
        size=get_train_size,
        seed=config["data"]["subsample_seed"],
        invalid=config["data"]["invalid_records"],
    resources:
        mem_mb=16000,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft prepare-train --dataset {wildcards.dataset} --local-dir {params.local_dir:q} {params.size} "
        "--seed {params.seed} --invalid {params.invalid} --out {output} > {log} 2>&1"


rule prepare_validation:
    input:
        get_raw_input,
    output:
        f"{RESULTS}/data/validation/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/prepare_validation/{{dataset}}.log",
    params:
        local_dir=get_local_dir,
        size=get_train_size,
        validation_size=config["data"]["validation_size"],
        seed=config["data"]["subsample_seed"],
        invalid=config["data"]["invalid_records"],
    resources:
        mem_mb=16000,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft prepare-validation --dataset {wildcards.dataset} --local-dir {params.local_dir:q} {params.size} "
        "--validation-size {params.validation_size} --seed {params.seed} --invalid {params.invalid} "
        "--out {output} > {log} 2>&1"


rule prepare_eval:
    input:
        get_raw_input,
    output:
        scored=f"{RESULTS}/data/eval/{{dataset}}.parquet",
        fewshot=f"{RESULTS}/data/fewshot/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/prepare_eval/{{dataset}}.log",
    params:
        local_dir=get_local_dir,
        max_examples=as_json(config["data"]["max_eval_examples"]),
        pool=config["data"]["fewshot_pool_size"],
        seed=config["data"]["subsample_seed"],
        invalid=config["data"]["invalid_records"],
    resources:
        mem_mb=16000,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft prepare-eval --dataset {wildcards.dataset} --local-dir {params.local_dir:q} "
        "--max-examples {params.max_examples:q} --pool-size {params.pool} --seed {params.seed} "
        "--invalid {params.invalid} --out-eval {output.scored} --out-fewshot {output.fewshot} > {log} 2>&1"
