localrules:
    aggregate,


# Every table and figure, from the per-example predictions already there:
#   snakemake aggregate --forcerun performance_table
rule aggregate:
    input:
        get_final_output(),


rule performance_table:
    input:
        predictions=get_all_predictions,
        manifest=f"{RESULTS}/checkpoints/manifest.json",
        selections=get_all_selections,
    output:
        f"{RESULTS}/tables/performance.parquet",
    log:
        f"{RESULTS}/logs/aggregate/performance.log",
    params:
        config=as_json(config["aggregate"]),
        study=config["study"],
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft performance --predictions {input.predictions} --manifest {input.manifest} "
        "--selections {input.selections} --study {params.study} --config {params.config:q} --out {output} > {log} 2>&1"


rule change_table:
    input:
        f"{RESULTS}/tables/performance.parquet",
    output:
        f"{RESULTS}/tables/change_per_checkpoint.parquet",
    log:
        f"{RESULTS}/logs/aggregate/change.log",
    params:
        format=config["aggregate"]["figure_format"],
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft change --performance {input} --format {params.format} --out {output} > {log} 2>&1"


rule mrc_table:
    input:
        f"{RESULTS}/tables/performance.parquet",
    output:
        f"{RESULTS}/tables/mrc.parquet",
    log:
        f"{RESULTS}/logs/aggregate/mrc.log",
    params:
        format=config["aggregate"]["figure_format"],
        config=as_json(config["aggregate"]),
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft mrc --performance {input} --format {params.format} --config {params.config:q} --out {output} > {log} 2>&1"


rule analysis_tables:
    input:
        f"{RESULTS}/tables/performance.parquet",
    output:
        learned=f"{RESULTS}/tables/learned_during_pretraining.parquet",
        sensitivity=f"{RESULTS}/tables/format_sensitivity.parquet",
        summary=f"{RESULTS}/tables/format_sensitivity_per_checkpoint.parquet",
    log:
        f"{RESULTS}/logs/aggregate/analysis_tables.log",
    params:
        format=config["aggregate"]["figure_format"],
        config=as_json(config["aggregate"]),
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft analysis-tables --performance {input} --format {params.format} --config {params.config:q} "
        "--learned {output.learned} --format-sensitivity {output.sensitivity} --format-summary {output.summary} "
        "> {log} 2>&1"


# Each table as an HTML page for the report (a browser cannot show Parquet).
rule report_table:
    input:
        f"{RESULTS}/tables/{{table}}.parquet",
    output:
        report(
            f"{RESULTS}/report/{{table}}.html",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
    log:
        f"{RESULTS}/logs/aggregate/report_table/{{table}}.log",
    wildcard_constraints:
        table="|".join(REPORT_TABLES),
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft table-html --table {input} --out {output} > {log} 2>&1"


rule figures:
    input:
        performance=f"{RESULTS}/tables/performance.parquet",
        change=f"{RESULTS}/tables/change_per_checkpoint.parquet",
    output:
        report(
            f"{RESULTS}/figures/base_vs_finetuned.png",
            caption="../report/base_vs_finetuned.rst",
            category="Figures",
        ),
        report(
            expand(f"{RESULTS}/figures/base_vs_finetuned_{{name}}.png", name=PLAN.eval_sets),
            caption="../report/base_vs_finetuned.rst",
            category="Figures",
        ),
        report(
            f"{RESULTS}/figures/average_change.png",
            caption="../report/average_change.rst",
            category="Figures",
        ),
    log:
        f"{RESULTS}/logs/aggregate/figures.log",
    params:
        eval_sets=PLAN.eval_sets,
        format=config["aggregate"]["figure_format"],
        out_dir=get_parent_dir,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft figures --performance {input.performance} --change {input.change} "
        "--eval-sets {params.eval_sets} --format {params.format} --out-dir {params.out_dir} > {log} 2>&1"
