# exec: the trainer replaces the rule's shell, which SIGTERM would otherwise end at once; Snakemake
# inside a SLURM job step then waits for the trainer to save instead of the step being killed.
rule finetune:
    input:
        unpack(get_finetune_inputs),
    output:
        model=directory(PLAN.run_file(RUN, "model")),
        log=PLAN.run_file(RUN, "log"),
        probes=PLAN.run_file(RUN, "probes"),
        summary=PLAN.run_file(RUN, "summary"),
    log:
        PLAN.log_path(f"finetune/{RUN}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        config=get_finetune_config,
        out_dir=get_run_dir,
        state=get_state_dir,
        validation=get_validation_arg,
    shell:
        "exec ptft finetune --checkpoint {input.checkpoint} --train {input.train} --task {wildcards.task} "
        "--method {wildcards.method} --config {params.config:q} --lr {wildcards.lr} --seed {wildcards.seed} "
        "--out-dir {params.out_dir} --state-dir {params.state} {params.validation} --threads {threads} > {log} 2>&1"


rule select_lr:
    input:
        get_grid_summaries,
    output:
        PLAN.selection_path(SELECTED_RUN),
    log:
        PLAN.log_path(f"select_lr/{SELECTED_RUN}"),
    localrule: True
    conda:
        "../../envs/ptft.yaml"
    params:
        metric=get_select_metric,
        group=get_grid_group,
    shell:
        "ptft select-lr --summaries {input} --metric {params.metric} --group {params.group:q} "
        "--out {output} > {log} 2>&1"
