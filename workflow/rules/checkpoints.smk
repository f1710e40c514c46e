localrules:
    download,


rule download:
    """Fetch every hub dataset and checkpoint of the study (`snakemake download` on a login node)."""
    input:
        get_download_output(),


if TOY_SUITE:

    rule pretrain_toy:
        input:
            [PLAN.raw_path(d) for d in PLAN.datasets],
        output:
            checkpoints=[directory(PLAN.checkpoint_path(c)) for c in PLAN.checkpoints],
            manifest=PLAN.manifest_path,
        log:
            PLAN.log_path("pretrain_toy"),
        conda:
            "../../envs/ptft.yaml"
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            config=as_json(config["checkpoints"]["toy"]),
            seed=config["seed"],
            state=PLAN.state_path("pretrain"),
            out_dir=get_parent_dir,
        shell:
            "ptft pretrain-toy --config {params.config:q} --seed {params.seed} --data-dirs {input} "
            "--out-dir {params.out_dir} --state-dir {params.state} --manifest {output.manifest} "
            "--threads {threads} > {log} 2>&1"

else:

    localrules:
        download_checkpoint,

    rule download_checkpoint:
        output:
            PLAN.checkpoint_path("{checkpoint}"),
        log:
            PLAN.log_path("download/checkpoint_{checkpoint}"),
        conda:
            "../../envs/ptft.yaml"
        params:
            entry=get_checkpoint_entry,
            revisions=get_revisions_source,
        shell:
            "ptft download --checkpoint {params.entry:q} --revisions {params.revisions:q} --out {output} > {log} 2>&1"

    rule checkpoint_manifest:
        input:
            [PLAN.checkpoint_path(c) for c in PLAN.checkpoints],
        output:
            PLAN.manifest_path,
        log:
            PLAN.log_path("checkpoint_manifest"),
        conda:
            "../../envs/ptft.yaml"
        params:
            suite=PLAN.suite,
        shell:
            "ptft checkpoint-manifest --pointers {input} --suite {params.suite} --out {output} > {log} 2>&1"
