rule finetune:
    input:
        unpack(get_finetune_inputs),
    output:
        model=directory(f"{RESULTS}/finetune/{RUN}/model"),
        log=f"{RESULTS}/finetune/{RUN}/train_log.parquet",
        probes=f"{RESULTS}/finetune/{RUN}/probes.parquet",
        summary=f"{RESULTS}/finetune/{RUN}/summary.json",
    log:
        f"{RESULTS}/logs/finetune/{RUN}.log",
    params:
        config=get_finetune_config,
        out_dir=get_finetuned_dir,
        state=get_finetune_state_dir,
        validation=get_validation_arg,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft finetune --checkpoint {input.checkpoint} --train {input.train} --task {wildcards.task} "
        "--method {wildcards.method} --config {params.config:q} --lr {wildcards.lr} --seed {wildcards.seed} "
        "--out-dir {params.out_dir} --state-dir {params.state} {params.validation} --threads {threads} > {log} 2>&1"


rule select_lr:
    input:
        get_grid_summaries,
    output:
        f"{RESULTS}/finetune/{SELECTED}.json",
    log:
        f"{RESULTS}/logs/select_lr/{SELECTED}.log",
    params:
        metric=(PLAN.select_lr or {}).get("metric", "loss"),
        group=get_grid_group,
    localrule: True
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft select-lr --summaries {input} --metric {params.metric} --group {params.group:q} "
        "--out {output} > {log} 2>&1"
