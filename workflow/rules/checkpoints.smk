rule toy_dataset:
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
        "--out-dir {output} > {log} 2>&1"


rule pretrain_toy:
    input:
        expand(f"{RESULTS}/raw/{{dataset}}", dataset=PLAN.datasets),
    output:
        checkpoints=[directory(get_checkpoint_dir(c)) for c in PLAN.checkpoints],
        manifest=f"{RESULTS}/checkpoints/manifest.json",
    log:
        f"{RESULTS}/logs/pretrain_toy.log",
    params:
        config=as_json(config["checkpoints"]["toy"]),
        seed=config["seed"],
        state=f"{STATE}/pretrain",
        out_dir=get_parent_dir,
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft pretrain-toy --config {params.config:q} --seed {params.seed} --data-dirs {input} "
        "--out-dir {params.out_dir} --state-dir {params.state} --manifest {output.manifest} "
        "--threads {threads} > {log} 2>&1"
