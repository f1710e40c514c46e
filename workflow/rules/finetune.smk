rule finetune:
    input:
        checkpoint=get_checkpoint_input,
        train=f"{RESULTS}/data/train/{{task}}.parquet",
    output:
        model=directory(f"{RESULTS}/finetune/{RUN}/model"),
        log=f"{RESULTS}/finetune/{RUN}/train_log.parquet",
        summary=f"{RESULTS}/finetune/{RUN}/summary.json",
    log:
        f"{RESULTS}/logs/finetune/{RUN}.log",
    params:
        config=get_finetune_config,
        out_dir=get_finetuned_dir,
        state=get_finetune_state_dir,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft finetune --checkpoint {input.checkpoint} --train {input.train} --task {wildcards.task} "
        "--config {params.config:q} --lr {wildcards.lr} --seed {wildcards.seed} --out-dir {params.out_dir} "
        "--state-dir {params.state} --threads {threads} > {log} 2>&1"
