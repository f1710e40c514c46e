"""``ptft`` sub-command of the evaluation stage: score one model on its eval sets and formats."""

from __future__ import annotations

from ptft.cli_args import json_arg, set_threads


def cmd_evaluate(a) -> None:
    from ptft.signals import run_stoppable

    # What is lost to a stop is at most the part being scored.
    kept = f"the finished parts are kept in {a.state_dir}" if a.state_dir else "nothing is kept (no --state-dir)"
    run_stoppable("ptft evaluate", lambda stop: _evaluate(a, stop), immediate=True, kept=kept)


def _evaluate(a, stop) -> None:
    from ptft import io, provenance
    from ptft.evaluate.run import evaluate_model, evaluate_trajectory, model_metadata, remove_parts, snapshot_dirs

    set_threads(a.threads)
    if a.trajectory:
        df = evaluate_trajectory(a.model_dir, a.model, a.evaluations, a.data_dir, a.config, a.seed, a.state_dir, stop,
                                 a.gpus)  # fmt: skip
        origin = {"checkpoints": provenance.union(provenance.checkpoints_of(d) for _, d in snapshot_dirs(a.model_dir))}
    else:
        meta = model_metadata(a.model_dir, a.model)
        df = evaluate_model(a.model_dir, meta, a.evaluations, a.data_dir, a.config, a.seed, a.state_dir, stop, a.gpus)
        origin = provenance.for_model(a.model_dir)
    io.write_parquet(a.out, df, origin)
    if a.state_dir:
        remove_parts(a.state_dir)


def cmd_measure_classifier(a) -> None:
    from ptft import io, provenance
    from ptft.evaluate.classifier_measures import measure

    set_threads(a.threads)
    quantities, reliability = measure(a.model_dir, a.start, a.validation, a.data_dir, a.model, a.evaluations,
                                      io.read_json(a.summary), a.max_length, a.batch_size)  # fmt: skip
    origin = provenance.for_model(a.model_dir)
    io.write_parquet(a.reliability, reliability, origin)
    io.write_parquet(a.out, quantities, origin)


def add_commands(sub) -> None:
    s = sub.add_parser("evaluate", help="score one model on its eval sets and formats")
    s.add_argument("--model-dir", required=True, help="the model (folder or pointer); with --trajectory its run's "
                   "snapshots folder or an lr selection's pointer")  # fmt: skip
    s.add_argument("--trajectory", action="store_true", help="score every snapshot of the run (finetune.snapshots)")
    s.add_argument("--model", type=json_arg, required=True, help="model metadata (plan.Model.metadata)")
    s.add_argument("--evaluations", type=json_arg, required=True, help="[{eval_set, relation, formats}] (plan)")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--config", type=json_arg, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--state-dir", default=None, help="where finished parts wait for a re-run after a stop")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--gpus", type=int, default=1, help="GPUs to split a model too large for one over (by layers)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("measure-classifier", help="calibration and feature change of a fine-tuned classifier (LP-FT)")
    s.add_argument("--model-dir", required=True, help="the fine-tuned classifier's folder")
    s.add_argument("--start", required=True, help="the model its run started from (checkpoint folder or pointer)")
    s.add_argument("--validation", required=True, help="its training task's validation split (temperature fit)")
    s.add_argument("--data-dir", required=True, help="results/<study>/data (its eval sets under eval/)")
    s.add_argument("--model", type=json_arg, required=True, help="model metadata (plan.Model.metadata)")
    s.add_argument("--evaluations", type=json_arg, required=True, help="[{eval_set, relation, formats}] (plan)")
    s.add_argument("--summary", required=True, help="the run's summary.json (its head norm at the start)")
    s.add_argument("--max-length", type=int, required=True, help="tokens per input at most (finetune.max_length)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--out", required=True)
    s.add_argument("--reliability", required=True, help="where the reliability diagrams' bins go")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_measure_classifier)
