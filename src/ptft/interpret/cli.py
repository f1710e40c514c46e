"""``ptft`` sub-commands of the mechanistic study's per-model jobs: layer probes and neuron pruning."""

from __future__ import annotations

from ptft.cli_args import json_arg, set_threads


def cmd_probe_layers(a) -> None:
    from ptft.signals import run_stoppable

    run_stoppable("ptft probe-layers", lambda stop: _probe_layers(a), immediate=True, kept="nothing (minutes of work)")


def _probe_layers(a) -> None:
    from ptft import io, provenance
    from ptft.interpret.stage import probe_model

    set_threads(a.threads)
    df = probe_model(a.model_dir, a.model, a.train, a.test, a.config, a.seed, a.add_bos)
    io.write_parquet(a.out, df, provenance.for_model(a.model_dir))


def cmd_prune_neurons(a) -> None:
    from ptft.signals import run_stoppable

    run_stoppable("ptft prune-neurons", lambda stop: _prune_neurons(a, stop), immediate=True,
                  kept="nothing (minutes of work)")  # fmt: skip


def _prune_neurons(a, stop) -> None:
    from ptft import io, provenance
    from ptft.interpret.stage import prune_model

    set_threads(a.threads)
    df = prune_model(a.model_dir, a.model, a.train, a.data_dir, a.evaluations, a.config, a.scoring, a.seed, stop)
    io.write_parquet(a.out, df, provenance.for_model(a.model_dir))


def add_commands(sub) -> None:
    s = sub.add_parser("probe-layers", help="a linear probe per layer at the answer position (mechanistic)")
    s.add_argument("--model-dir", required=True, help="the model (folder or pointer)")
    s.add_argument("--model", type=json_arg, required=True, help="model metadata (plan.Model.metadata)")
    s.add_argument("--train", required=True, help="the records the probes are fitted on (data/train/<dataset>)")
    s.add_argument("--test", required=True, help="the records they are scored on (data/eval/<dataset>)")
    s.add_argument("--config", type=json_arg, required=True, help="the mechanistic.layer_probes block")
    s.add_argument("--add-bos", type=json_arg, default="auto", help="evaluate.add_bos (auto, true, false)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_probe_layers)

    s = sub.add_parser("prune-neurons", help="score a model with its top-K MLP neurons zeroed, per K (mechanistic)")
    s.add_argument("--model-dir", required=True, help="the model (folder or pointer)")
    s.add_argument("--model", type=json_arg, required=True, help="model metadata (plan.Model.metadata)")
    s.add_argument("--train", required=True, help="the records whose loss ranks the neurons (data/train/<dataset>)")
    s.add_argument("--data-dir", required=True, help="results/<study>/data (its eval/ folder is scored)")
    s.add_argument("--evaluations", type=json_arg, required=True, help="[{eval_set, relation, formats}] (plan)")
    s.add_argument("--config", type=json_arg, required=True, help="the mechanistic.pruning block")
    s.add_argument("--scoring", type=json_arg, required=True, help="the evaluate block (how a set is scored)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_prune_neurons)
