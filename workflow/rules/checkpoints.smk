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

elif PCFG_SUITE:

    # The PCFG suite (Jain et al.): the main pre-training run writes the step<N> checkpoints; the baseline
    # run (checkpoints.pcfg.baseline), pre-trained on the fine-tuning task, writes the one named scratch.
    rule pretrain_pcfg:
        output:
            checkpoints=[directory(PLAN.checkpoint_path(c)) for c in PLAN.pretraining_checkpoints("pretrain")],
            manifest=PLAN.pretraining_manifest_path("pretrain"),
        log:
            PLAN.log_path("pretrain_pcfg"),
        conda:
            "../../envs/ptft.yaml"
        threads: 2
        resources:
            mem_mb=4000,
            runtime=240,
        params:
            config=as_json(config["checkpoints"]["pcfg"]),
            seed=config["seed"],
            run="pretrain",
            state=PLAN.state_path("pretrain"),
            out_dir=get_parent_dir,
        shell:
            "ptft pretrain-pcfg --config {params.config:q} --run {params.run} --seed {params.seed} "
            "--out-dir {params.out_dir} --state-dir {params.state} --manifest {output.manifest} "
            "--threads {threads} > {log} 2>&1"

    use rule pretrain_pcfg as pretrain_pcfg_baseline with:
        output:
            checkpoints=[directory(PLAN.checkpoint_path(c)) for c in PLAN.pretraining_checkpoints("baseline")],
            manifest=PLAN.pretraining_manifest_path("baseline"),
        log:
            PLAN.log_path("pretrain_pcfg_baseline"),
        params:
            config=as_json(config["checkpoints"]["pcfg"]),
            seed=config["seed"],
            run="baseline",
            state=PLAN.state_path("pretrain_baseline"),
            out_dir=get_parent_dir,

    rule pcfg_manifest:
        input:
            [PLAN.pretraining_manifest_path(r) for r in ("pretrain", "baseline") if PLAN.pretraining_checkpoints(r)],
        output:
            PLAN.manifest_path,
        log:
            PLAN.log_path("checkpoint_manifest"),
        conda:
            "../../envs/ptft.yaml"
        shell:
            "ptft checkpoint-manifest --manifests {input} --suite pcfg --out {output} > {log} 2>&1"

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
