# Learning-dynamics probe sets (docs/learning-dynamics.md): every response type of N probe prompts,
# built once per study and read by every run that probes (finetune.probes.set). The rewrites' reply
# cache lives under .state/, so a re-run sends only the requests whose replies are missing.


rule build_probe_set:
    input:
        unpack(get_probe_set_inputs),
    output:
        probes=PLAN.probe_set_path("{probe_set}"),
        record=PLAN.probe_set_path("{probe_set}").removesuffix(".parquet") + ".json",
    log:
        PLAN.log_path("probes/{probe_set}"),
    wildcard_constraints:
        probe_set="[^/]+",
    conda:
        "../../envs/ptft.yaml"
    threads: 1
    # The initial responses are sampled from a model: a GPU slot on a cluster (profiles/slurm).
    resources:
        mem_mb=16000,
        runtime=6 * 60,
    params:
        task=lambda wildcards: PLAN.probe_sets[wildcards.probe_set]["task"],
        config=lambda wildcards: as_json(PLAN.probe_sets[wildcards.probe_set]),
        initial=get_probe_set_initial,
        cache=PLAN.state_path("probes/replies.sqlite"),
    shell:
        "ptft build-probes --train {input.train} --test {input.test} --task {params.task} "
        "--config {params.config:q} {params.initial} --cache {params.cache} --out {output.probes} "
        "--name {wildcards.probe_set} --threads {threads} > {log} 2>&1"
