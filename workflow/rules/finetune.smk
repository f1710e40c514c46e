# One job per training run; {run} is its folder under finetune/ (ptft.plan.Model.run), and the
# plan says what the run is: its task, method, lr, seed, training subsample and starting model.
FINETUNE_OUTPUT = dict(
    model=directory(PLAN.run_file("{run}", "model")),
    log=PLAN.run_file("{run}", "log"),
    probes=PLAN.run_file("{run}", "probes"),
    summary=PLAN.run_file("{run}", "summary"),
)


# exec: the trainer replaces the rule's shell, which SIGTERM would otherwise end at once; Snakemake
# inside a SLURM job step then waits for the trainer to save instead of the step being killed.
# gpu: finetune.gpus, as resources (not params) so that changing it re-runs nothing; on SLURM,
# --gpus=N on one node with 4 CPUs per GPU, and the trainer starts one process per GPU.
rule finetune:
    input:
        unpack(get_finetune_inputs),
    output:
        **FINETUNE_OUTPUT,
    log:
        PLAN.log_path("finetune/{run}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=get_finetune_gpus,
        nodes=1,
        cpus_per_task=lambda wildcards: 4 * get_finetune_gpus(wildcards),
    params:
        config=get_finetune_config,
        run=get_run_args,
        out_dir=get_run_dir,
        state=get_state_dir,
        validation=get_validation_arg,
    shell:
        "exec ptft finetune --checkpoint {input.checkpoint} --train {input.train} {params.run} "
        "--config {params.config:q} --out-dir {params.out_dir} --state-dir {params.state} {params.validation} "
        "--threads {threads} --gpus {resources.gpu} > {log} 2>&1"


# A run that saves its trajectory (finetune.snapshots) has its snapshots folder as an output too,
# deleted once every job that reads it is done unless the study keeps it (snapshots.keep).
if snapshot_runs_pattern(keep=False):

    use rule finetune as finetune_snapshots with:
        output:
            **FINETUNE_OUTPUT,
            snapshots=temp(directory(PLAN.run_file("{run}", "snapshots"))),
        wildcard_constraints:
            run=snapshot_runs_pattern(keep=False),

    ruleorder: finetune_snapshots > finetune


if snapshot_runs_pattern(keep=True):

    use rule finetune as finetune_snapshots_kept with:
        output:
            **FINETUNE_OUTPUT,
            snapshots=directory(PLAN.run_file("{run}", "snapshots")),
        wildcard_constraints:
            run=snapshot_runs_pattern(keep=True),

    ruleorder: finetune_snapshots_kept > finetune


rule select_lr:
    input:
        get_grid_summaries,
    output:
        PLAN.selection_path("{run}"),
    log:
        PLAN.log_path("select_lr/{run}"),
    wildcard_constraints:
        run="(?:[^/]+/)+selected/seed[0-9]+",
    localrule: True
    conda:
        "../../envs/ptft.yaml"
    params:
        metric=get_select_metric,
        group=get_grid_group,
    shell:
        "ptft select-lr --summaries {input} --metric {params.metric} --group {params.group:q} "
        "--out {output} > {log} 2>&1"
