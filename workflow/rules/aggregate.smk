localrules:
    aggregate,


# Every table and figure, from the per-example predictions already there:
#   snakemake aggregate --forcerun performance_table [dissect_tables]
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
        change=f"{RESULTS}/tables/change_per_checkpoint.parquet",
        slope=f"{RESULTS}/tables/change_slope.parquet",
    log:
        f"{RESULTS}/logs/aggregate/change.log",
    params:
        format=config["aggregate"]["figure_format"],
        config=as_json(config["aggregate"]),
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft change --performance {input} --format {params.format} --config {params.config:q} "
        "--out {output.change} --slope-out {output.slope} > {log} 2>&1"


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


# Each table as an HTML page for the report (a browser cannot show Parquet), filed under its
# analysis next to that analysis's figures: one rule per analysis, as a category is fixed per rule.
for _analysis, _tables in REPORT_TABLES.items():

    rule:
        name:
            f"report_table_{_analysis}"
        input:
            f"{RESULTS}/tables/{{table}}.parquet",
        output:
            report(
                f"{RESULTS}/report/{{table}}.html",
                caption="../report/table.rst",
                category=ANALYSES[_analysis],
                subcategory="Tables",
                labels={"table": "{table}"},
            ),
        log:
            f"{RESULTS}/logs/aggregate/report_table/{{table}}.log",
        wildcard_constraints:
            table="|".join(_tables),
        conda:
            "../../envs/ptft.yaml"
        shell:
            "ptft table-html --table {input} --out {output} > {log} 2>&1"


rule figures:
    input:
        performance=f"{RESULTS}/tables/performance.parquet",
        change=f"{RESULTS}/tables/change_per_checkpoint.parquet",
        probes=[f"{RESULTS}/finetune/{m.id.removeprefix('ft/')}/probes.parquet" for m in PROBE_RUNS],
        manifest=f"{RESULTS}/checkpoints/manifest.json",
    output:
        report(
            f"{RESULTS}/figures/base_vs_finetuned.png",
            caption="../report/base_vs_finetuned.rst",
            category=ANALYSES["performance"],
            subcategory="Figures",
        ),
        report(
            expand(f"{RESULTS}/figures/base_vs_finetuned_{{name}}.png", name=PLAN.eval_sets),
            caption="../report/base_vs_finetuned.rst",
            category=ANALYSES["performance"],
            subcategory="Figures",
        ),
        report(
            f"{RESULTS}/figures/average_change.png",
            caption="../report/average_change.rst",
            category=ANALYSES["change"],
            subcategory="Figures",
        ),
        report(
            expand(f"{RESULTS}/figures/{{name}}.png", name=[r.replace("-", "_") for r in FIGURE_RELATIONS]),
            caption="../report/relation.rst",
            category=ANALYSES["transfer"],
            subcategory="Figures",
        ),
        report(
            [f"{RESULTS}/figures/format_sensitivity.png"] if FORMAT_EVAL_SETS else [],
            caption="../report/format_sensitivity.rst",
            category=ANALYSES["formats"],
            subcategory="Figures",
        ),
        report(
            [f"{RESULTS}/figures/learning_dynamics_{t}_{m}.png" for t, m in PROBE_FIGURES],
            caption="../report/learning_dynamics.rst",
            category=ANALYSES["dynamics"],
            subcategory="Figures",
        ),
        [f"{RESULTS}/figures/learning_dynamics_{t}_{m}.svg" for t, m in PROBE_FIGURES],
        expand(
            f"{RESULTS}/figures/{{name}}.svg",
            name=["base_vs_finetuned", "average_change"]
            + [f"base_vs_finetuned_{e}" for e in PLAN.eval_sets]
            + [r.replace("-", "_") for r in FIGURE_RELATIONS]
            + (["format_sensitivity"] if FORMAT_EVAL_SETS else []),
        ),
    log:
        f"{RESULTS}/logs/aggregate/figures.log",
    params:
        eval_sets=PLAN.eval_sets,
        format=config["aggregate"]["figure_format"],
        relations=FIGURE_RELATIONS,
        format_eval_sets=FORMAT_EVAL_SETS,
        probe_runs=get_probe_runs,
        out_dir=get_parent_dir,
    conda:
        "../../envs/ptft.yaml"
    shell:
        "ptft figures --performance {input.performance} --change {input.change} "
        "--eval-sets {params.eval_sets} --format {params.format} --relations {params.relations} "
        "--format-eval-sets {params.format_eval_sets} --probe-runs {params.probe_runs:q} --manifest {input.manifest} "
        "--out-dir {params.out_dir} > {log} 2>&1"
