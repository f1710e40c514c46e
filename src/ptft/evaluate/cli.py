"""``ptft`` sub-command of the evaluation stage: score one model on its eval sets and formats."""

from __future__ import annotations

from ptft.cli_args import json_arg, set_threads


def cmd_evaluate(a) -> None:
    from ptft import io
    from ptft.evaluate.run import evaluate_model, model_metadata

    set_threads(a.threads)
    meta = model_metadata(a.model_dir, a.model)
    df = evaluate_model(a.model_dir, meta, a.evaluations, a.data_dir, a.config, a.seed)
    io.write_parquet(a.out, df)


def add_commands(sub) -> None:
    s = sub.add_parser("evaluate", help="score one model on its eval sets and formats")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--model", type=json_arg, required=True, help="model metadata (plan.Model.metadata)")
    s.add_argument("--evaluations", type=json_arg, required=True, help="[{eval_set, relation, formats}] (plan)")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--config", type=json_arg, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_evaluate)
