# Controlled-variable derivation (studies.md §2, §3) and the Dissecting analysis.
# The reply cache lives under .state/: Snakemake never deletes it, so a re-run, a crash or
# an edited setting never sends a request whose reply is already there.


rule derive_corpus:
    input:
        get_corpus_input,
    output:
        f"{RESULTS}/derive/corpus.parquet",
    log:
        f"{RESULTS}/logs/derive/corpus.log",
    params:
        corpus=as_json(DERIVE["corpus"]),
        local_dir=get_corpus_local_dir,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft derive-corpus --corpus {params.corpus:q} --local-dir={params.local_dir:q} --out {output} > {log} 2>&1"


rule derive_variants:
    input:
        corpus=f"{RESULTS}/derive/corpus.parquet",
        templates=[template_path(v["template"]) for v in DERIVE["variants"]],
    output:
        variants=f"{RESULTS}/derive/variants.parquet",
        stats=f"{RESULTS}/tables/derive_stats.parquet",
    log:
        f"{RESULTS}/logs/derive/variants.log",
    params:
        config=get_derive_config(),
        cache=f"{STATE}/derive/replies.sqlite",
    threads: 1
    resources:
        runtime=24 * 60,
        # A local model generates on a GPU slot; an API or the toy world needs none.
        **({"gpu": 1, "mem_mb": 32000} if DERIVE["backend"]["name"] == "hf" else {}),
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft derive --corpus {input.corpus} --config {params.config:q} --templates {input.templates} "
        "--cache {params.cache} "
        "--out {output.variants} --stats {output.stats} > {log} 2>&1"


rule dissect_loglik:
    input:
        corpus=f"{RESULTS}/derive/corpus.parquet",
        variants=f"{RESULTS}/derive/variants.parquet",
        model=get_dissect_model_dir,
    output:
        f"{RESULTS}/dissect/{{kind}}/{{model}}/loglik.parquet",
    log:
        f"{RESULTS}/logs/dissect/{{kind}}/{{model}}.log",
    wildcard_constraints:
        kind="base|ft",
        model=".+",
    params:
        batch_size=config.get("dissect", {}).get("batch_size", 16),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft dissect-loglik --model-dir {input.model} --corpus {input.corpus} --variants {input.variants} "
        "--batch-size {params.batch_size} --threads {threads} --out {output} > {log} 2>&1"


rule dissect_tables:
    input:
        [f"{RESULTS}/dissect/{m.id}/loglik.parquet" for m in DISSECT_MODELS],
    output:
        change=f"{RESULTS}/tables/dissect_change.parquet",
        components=f"{RESULTS}/tables/dissect_components.parquet",
    log:
        f"{RESULTS}/logs/dissect/tables.log",
    params:
        pairs=get_dissect_pairs,
        config=as_json(config["aggregate"]),
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft dissect --pairs {params.pairs:q} --config {params.config:q} --change-out {output.change} "
        "--components-out {output.components} > {log} 2>&1"


rule dissect_figure:
    input:
        change=f"{RESULTS}/tables/dissect_change.parquet",
        components=f"{RESULTS}/tables/dissect_components.parquet",
    output:
        png=report(
            f"{RESULTS}/figures/dissecting.png",
            caption="../report/dissecting.rst",
            category=ANALYSES["dissect"],
            subcategory="Figures",
        ),
        svg=f"{RESULTS}/figures/dissecting.svg",
    log:
        f"{RESULTS}/logs/dissect/figure.log",
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft dissect-figure --change {input.change} --components {input.components} --out {output.png} > {log} 2>&1"
