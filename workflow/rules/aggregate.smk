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
        manifest=PLAN.manifest_path,
        selections=get_all_selections,
    output:
        PLAN.table_path("performance"),
    log:
        PLAN.log_path("aggregate/performance"),
    conda:
        "../../envs/ptft.yaml"
    params:
        config=as_json(config["aggregate"]),
        study=config["study"],
    shell:
        "ptft performance --predictions {input.predictions} --manifest {input.manifest} "
        "--selections {input.selections} --study {params.study} --config {params.config:q} --out {output} > {log} 2>&1"


# The same rows for every snapshot of the runs' trajectories (finetune.snapshots); the base
# models' predictions are the reference of the paired intervals.
rule trajectory_table:
    input:
        predictions=get_all_trajectories,
        base=get_base_predictions,
        manifest=PLAN.manifest_path,
        selections=get_all_selections,
    output:
        PLAN.table_path("trajectory"),
    log:
        PLAN.log_path("aggregate/trajectory"),
    conda:
        "../../envs/ptft.yaml"
    params:
        config=as_json(config["aggregate"]),
        study=config["study"],
    shell:
        "ptft performance --predictions {input.predictions} --base {input.base} --manifest {input.manifest} "
        "--selections {input.selections} --study {params.study} --config {params.config:q} --out {output} > {log} 2>&1"


# One job per analysis of ptft.analysis: the tables it computes from the performance table and
# its figures, filed in the report under the analysis's category.
for _analysis in PLAN.analyses():
    _tables = PLAN.analysis_tables(_analysis)
    _figures = _analysis.figures(PLAN)
    if not (_tables or _figures):
        continue

    rule:
        name:
            f"analysis_{_analysis.name}"
        input:
            **_analysis.inputs(PLAN),
        output:
            tables=[PLAN.table_path(t) for t in _tables],
            figures=report(
                [PLAN.figure_paths(f)[0] for f in _figures],
                caption="../report/caption.rst",
                category=_analysis.category,
                subcategory="Figures",
            ),
            svg=[PLAN.figure_paths(f)[1] for f in _figures],
        log:
            PLAN.log_path(f"aggregate/{_analysis.name}"),
        conda:
            "../../envs/ptft.yaml"
        params:
            name=_analysis.name,
            inputs=get_input_args,
            spec=as_json(PLAN.analysis_spec(_analysis)),
            config=as_json(config["aggregate"]),
            caption=_analysis.figure_caption,
        shell:
            "ptft analysis --name {params.name} {params.inputs} --spec {params.spec:q} --config {params.config:q} "
            "--tables {output.tables} --figures {output.figures} > {log} 2>&1"


# Each table as an HTML page for the report (a browser cannot show Parquet), filed under its
# analysis next to that analysis's figures: one rule per analysis, as a category is fixed per rule.
for _analysis in PLAN.analyses():
    _tables = [t for t, a in PLAN.tables().items() if a == _analysis.name]
    if not _tables:
        continue

    rule:
        name:
            f"report_table_{_analysis.name}"
        input:
            PLAN.table_path("{table}"),
        output:
            report(
                PLAN.report_page("{table}"),
                caption="../report/caption.rst",
                category=_analysis.category,
                subcategory="Tables",
                labels={"table": "{table}"},
            ),
        log:
            PLAN.log_path("aggregate/report_table/{table}"),
        wildcard_constraints:
            table="|".join(_tables),
        conda:
            "../../envs/ptft.yaml"
        params:
            caption=get_report_caption,
        shell:
            "ptft table-html --table {input} --out {output} > {log} 2>&1"
