# The mechanistic analyses of Jain et al. (mechanistic section, docs/mechanistic.md): per model, a linear
# probe per layer and one-shot neuron pruning; the mechanistic analysis job makes their tables.
if config["mechanistic"].get("layer_probes"):

    rule probe_layers_base:
        input:
            unpack(get_probe_inputs),
            model=get_checkpoint_input,
        output:
            PLAN.layer_probes_path("base/{checkpoint}"),
        log:
            PLAN.log_path("probe_layers/base/{checkpoint}"),
        conda:
            "../../envs/ptft.yaml"
        threads: 1
        resources:
            mem_mb=8000,
            runtime=60,
        params:
            meta=get_model_meta,
            config=as_json(config["mechanistic"]["layer_probes"]),
            add_bos=as_json(config["evaluate"]["add_bos"]),
            seed=config["seed"],
        shell:
            "ptft probe-layers --model-dir {input.model} --model {params.meta:q} --train {input.train} "
            "--test {input.test} --config {params.config:q} --add-bos {params.add_bos:q} --seed {params.seed} "
            "--out {output} --threads {threads} > {log} 2>&1"

    use rule probe_layers_base as probe_layers_finetuned with:
        input:
            unpack(get_probe_inputs),
            model=get_eval_model,
        output:
            PLAN.layer_probes_path("ft/{run}"),
        log:
            PLAN.log_path("probe_layers/ft/{run}"),


if config["mechanistic"].get("pruning"):

    rule prune_neurons:
        input:
            unpack(get_pruning_inputs),
            model=get_eval_model,
        output:
            PLAN.pruning_path("ft/{run}"),
        log:
            PLAN.log_path("prune_neurons/ft/{run}"),
        conda:
            "../../envs/ptft.yaml"
        threads: 1
        resources:
            mem_mb=8000,
            runtime=60,
        params:
            meta=get_model_meta,
            config=as_json(config["mechanistic"]["pruning"]),
            evaluations=as_json(PLAN.pruning_evaluations()),
            scoring=as_json(evaluate_settings()),
            seed=config["seed"],
            data_dir=get_data_dir,
        shell:
            "ptft prune-neurons --model-dir {input.model} --model {params.meta:q} --train {input.train} "
            "--data-dir {params.data_dir} --evaluations {params.evaluations:q} --config {params.config:q} "
            "--scoring {params.scoring:q} --seed {params.seed} --out {output} --threads {threads} > {log} 2>&1"
