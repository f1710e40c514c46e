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
        df = evaluate_trajectory(a.model_dir, a.model, a.evaluations, a.data_dir, a.config, a.seed, a.state_dir, stop)
        origin = {"checkpoints": provenance.union(provenance.checkpoints_of(d) for _, d in snapshot_dirs(a.model_dir))}
    else:
        meta = model_metadata(a.model_dir, a.model)
        df = evaluate_model(a.model_dir, meta, a.evaluations, a.data_dir, a.config, a.seed, a.state_dir, stop)
        origin = provenance.for_model(a.model_dir)
    io.write_parquet(a.out, df, origin)
    if a.state_dir:
        remove_parts(a.state_dir)


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
    s.set_defaults(func=cmd_evaluate)
