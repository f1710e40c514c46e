localrules:
    download_dataset,


rule toy_dataset:
    input:
        held_out=get_toy_held_out,
    output:
        directory(PLAN.raw_path("{dataset}", source="toy")),
    log:
        PLAN.log_path("toy_dataset/{dataset}"),
    conda:
        "../../envs/ptft.yaml"
    params:
        sizes=as_json(config["data"]["toy_sizes"]),
        seed=config["seed"],
    shell:
        "ptft toy-data --dataset {wildcards.dataset} --sizes {params.sizes:q} --seed {params.seed} "
        "--out-dir {output} --held-out {input.held_out} > {log} 2>&1"


rule download_dataset:
    output:
        PLAN.raw_path("{dataset}", source="hub"),
    log:
        PLAN.log_path("download/dataset_{dataset}"),
    conda:
        "../../envs/ptft.yaml"
    params:
        data_dir=config["data"]["data_dir"] or "",
        invalid=config["data"]["invalid_records"],
    shell:
        "ptft download --dataset {wildcards.dataset} --data-dir {params.data_dir:q} --invalid {params.invalid} "
        "--out {output} > {log} 2>&1"


rule prepare_train:
    input:
        get_raw_input,
    output:
        PLAN.data_path("train", "{dataset}"),
    log:
        PLAN.log_path("prepare_train/{dataset}"),
    conda:
        "../../envs/ptft.yaml"
    resources:
        mem_mb=16000,
    params:
        local_dir=get_local_dir,
        size=get_train_size,
        seed=config["data"]["subsample_seed"],
        invalid=config["data"]["invalid_records"],
    shell:
        "ptft prepare-train --dataset {wildcards.dataset} --local-dir {params.local_dir:q} {params.size} "
        "--seed {params.seed} --invalid {params.invalid} --out {output} > {log} 2>&1"


# One size of a task's sweep (data.per_task.<task>.train_sizes): the first n examples of the same
# shuffled split as every other size, so a larger sample extends a smaller one.
use rule prepare_train as prepare_train_size with:
    output:
        PLAN.train_data_path("{dataset}", "{size}"),
    log:
        PLAN.log_path("prepare_train/{dataset}/n{size}"),


rule prepare_validation:
    input:
        get_raw_input,
    output:
        PLAN.data_path("validation", "{dataset}"),
    log:
        PLAN.log_path("prepare_validation/{dataset}"),
    conda:
        "../../envs/ptft.yaml"
    resources:
        mem_mb=16000,
    params:
        local_dir=get_local_dir,
        size=get_train_size,
        validation_size=config["data"]["validation_size"],
        seed=config["data"]["subsample_seed"],
        invalid=config["data"]["invalid_records"],
    shell:
        "ptft prepare-validation --dataset {wildcards.dataset} --local-dir {params.local_dir:q} {params.size} "
        "--validation-size {params.validation_size} --seed {params.seed} --invalid {params.invalid} "
        "--out {output} > {log} 2>&1"


rule prepare_eval:
    input:
        get_raw_input,
    output:
        scored=PLAN.data_path("eval", "{dataset}"),
        fewshot=PLAN.data_path("fewshot", "{dataset}"),
    log:
        PLAN.log_path("prepare_eval/{dataset}"),
    conda:
        "../../envs/ptft.yaml"
    resources:
        mem_mb=16000,
    params:
        local_dir=get_local_dir,
        max_examples=as_json(config["data"]["max_eval_examples"]),
        pool=config["data"]["fewshot_pool_size"],
        seed=config["data"]["subsample_seed"],
        invalid=config["data"]["invalid_records"],
    shell:
        "ptft prepare-eval --dataset {wildcards.dataset} --local-dir {params.local_dir:q} "
        "--max-examples {params.max_examples:q} --pool-size {params.pool} --seed {params.seed} "
        "--invalid {params.invalid} --out-eval {output.scored} --out-fewshot {output.fewshot} > {log} 2>&1"
