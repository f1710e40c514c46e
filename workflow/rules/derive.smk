# Controlled-variable derivation (docs/studies.md §2, §3) and the Dissecting analysis.
# The reply cache lives under .state/: Snakemake never deletes it, so a re-run, a crash or
# an edited setting never sends a request whose reply is already there.


rule derive_corpus:
    input:
        get_corpus_input,
    output:
        PLAN.derive_path("corpus"),
    log:
        PLAN.log_path("derive/corpus"),
    conda:
        "../../envs/ptft.yaml"
    params:
        corpus=as_json(config["derive"]["corpus"]),
        local_dir=get_corpus_local_dir,
    shell:
        "ptft derive-corpus --corpus {params.corpus:q} --local-dir={params.local_dir:q} --out {output} > {log} 2>&1"


rule derive_variants:
    input:
        corpus=PLAN.derive_path("corpus"),
        templates=[template_path(v["template"]) for v in config["derive"]["variants"]],
    output:
        variants=PLAN.derive_path("variants"),
        stats=PLAN.table_path("derive_stats"),
    log:
        PLAN.log_path("derive/variants"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    # A local model generates on a GPU slot; an API or the toy world needs none.
    resources:
        **({"gpu": 1, "mem_mb": 32000} if config["derive"]["backend"]["name"] == "hf" else {}),
        runtime=24 * 60,
    params:
        config=get_derive_config(),
        cache=PLAN.state_path("derive/replies.sqlite"),
    shell:
        "ptft derive --corpus {input.corpus} --config {params.config:q} --templates {input.templates} "
        "--cache {params.cache} "
        "--out {output.variants} --stats {output.stats} > {log} 2>&1"


rule dissect_loglik:
    input:
        corpus=PLAN.derive_path("corpus"),
        variants=PLAN.derive_path("variants"),
        model=get_dissect_model_dir,
    output:
        PLAN.dissect_path("{kind}/{model}"),
    log:
        PLAN.log_path("dissect/{kind}/{model}"),
    wildcard_constraints:
        kind="base|ft",
        model=".+",
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        batch_size=get_dissect_batch_size,
    shell:
        "ptft dissect-loglik --model-dir {input.model} --corpus {input.corpus} --variants {input.variants} "
        "--batch-size {params.batch_size} --threads {threads} --out {output} > {log} 2>&1"


# Every snapshot of a run on the corpus (finetune.snapshots): the Dissecting change along training.
rule dissect_trajectory:
    input:
        corpus=PLAN.derive_path("corpus"),
        variants=PLAN.derive_path("variants"),
        model=get_dissect_snapshots,
    output:
        PLAN.dissect_trajectory_path("ft/{run}"),
    log:
        PLAN.log_path("dissect/trajectory/{run}"),
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        batch_size=get_dissect_batch_size,
    shell:
        "ptft dissect-loglik --trajectory --model-dir {input.model} --corpus {input.corpus} "
        "--variants {input.variants} --batch-size {params.batch_size} --threads {threads} --out {output} > {log} 2>&1"


rule dissect_tables:
    input:
        get_dissect_loglik,
    output:
        change=PLAN.table_path("dissect_change"),
        components=PLAN.table_path("dissect_components"),
    log:
        PLAN.log_path("dissect/tables"),
    conda:
        "../../envs/ptft.yaml"
    params:
        pairs=get_dissect_pairs,
        config=as_json(config["aggregate"]),
    shell:
        "ptft dissect --pairs {params.pairs:q} --config {params.config:q} --change-out {output.change} "
        "--components-out {output.components} > {log} 2>&1"
