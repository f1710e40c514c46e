localrules:
    download,


rule download:
    """Fetch every hub dataset and checkpoint of the study (`snakemake download` on a login node)."""
    input:
        get_download_output(),


if TOY_SUITE:

    rule pretrain_toy:
        input:
            expand(f"{RESULTS}/raw/{{dataset}}", dataset=PLAN.datasets),
        output:
            checkpoints=[directory(get_checkpoint_path(c)) for c in PLAN.checkpoints],
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

else:

    localrules:
        download_checkpoint,

    rule download_checkpoint:
        output:
            f"{RESULTS}/checkpoints/{{checkpoint}}.json",
        log:
            f"{RESULTS}/logs/download/checkpoint_{{checkpoint}}.log",
        params:
            entry=get_checkpoint_entry,
            revisions=get_revisions_source,
        conda:
            "../../envs/ptft.yaml"
        shell:
            "ptft download --checkpoint {params.entry:q} --revisions {params.revisions:q} --out {output} > {log} 2>&1"

    rule checkpoint_manifest:
        input:
            [get_checkpoint_path(c) for c in PLAN.checkpoints],
        output:
            f"{RESULTS}/checkpoints/manifest.json",
        log:
            f"{RESULTS}/logs/checkpoint_manifest.log",
        params:
            suite=PLAN.suite,
        conda:
            "../../envs/ptft.yaml"
        shell:
            "ptft checkpoint-manifest --pointers {input} --suite {params.suite} --out {output} > {log} 2>&1"
