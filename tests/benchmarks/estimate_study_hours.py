"""GPU-hours of a whole study, from the throughput that ``bench_gpu.py`` measured (not run in CI).

    .venv/bin/python tests/benchmarks/estimate_study_hours.py \\
        --measured tests/benchmarks/measured/gpu_h100_olmo1b.json \\
        --study workflow/studies/amuro-char-olmo1b.yaml [--lr-grid 3] [--eval-batch-size 16]

The study's plan (:func:`ptft.plan.build_plan`) gives every fine-tuning run and every
(model, eval set, format) evaluation. Then:

- **fine-tuning** seconds of a run = optimizer steps × examples per step × tokens per example
  of its task (:data:`TOKENS_PER_EXAMPLE`) / the measured tokens/s of ours, full or LoRA (the
  study's method; instruction tuning is full), on the ``mnli`` length profile for short
  examples and the ``xsum`` one for long examples (:data:`LONG`);
- **evaluation** seconds = items of the eval set (:data:`EVAL_ITEMS`, the full splits the study
  scores) × formats / the measured items/s of its kind: TokenProb for classification,
  generation for generation (4-shot prompts of XSum length and all 60 new tokens, an upper
  bound for the shorter question-generation prompts and for models that stop early), multiple
  choice for multiple choice.

``--finetune-path ours_compiled`` prices fine-tuning at the compiled loop's rate (``bench_gpu.py
--finetune-compile``), and ``--steady`` without the CUDA graphs' captures.

With ``--eval-measured`` the evaluation rates come from another benchmark file (an H200 run of
``bench_gpu.py --profiles ""``), ``--eval-mode`` picks its paths (``compiled``: as a GPU runs
them now, plus a row for the compilation, once per evaluation job: each path's first pass less its
second), and ``--fewshot fixed`` takes TokenProb and generation with fixed shots (:func:`eval_rates`).

Not counted: loading checkpoints, writing models, data preparation, and the validation passes
of lr selection (seconds to minutes a job). ``--lr-grid N`` multiplies the fine-tuning (and the
evaluation of fine-tuned models) by N, for comparison with a paper that tuned the lr on a
grid and reported the cost of the whole project.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile

import pandas as pd

from ptft.config import load_study
from ptft.data.registry import get_dataset
from ptft.evaluate.generate import PREFIX_WHEN_COMPILED
from ptft.finetune.train import count_steps
from ptft.plan import build_plan

# Items of each eval set's scored split (dataset cards); gpt3nli's is not stated on its card.
EVAL_ITEMS = {
    "mnli_matched": 9815, "mnli_mismatched": 9832, "rte": 277, "gpt3nli": 5000, "paws": 8000, "qqp": 40430,
    "stsb": 1500, "xsum": 11334, "xlsum": 11535, "cnn": 11490, "socialiqa": 1954, "sciq": 1000, "tweetqa": 1086,
    "boolq": 3270, "sciq_mc": 1000, "hellaswag": 10042, "arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500,
}  # fmt: skip
ASSUMED = {"gpt3nli", "tulu"}
# Mean tokens of a training example in the default format (GPT-NeoX tokenizer, about 1.3 a word).
TOKENS_PER_EXAMPLE = {"mnli": 60, "paws": 75, "socialiqa": 75, "xsum": 590, "tulu": 1100}
LONG = {"xsum", "tulu"}
TULU_V2_MIXTURE = 326_154  # allenai/tulu-v2-sft-mixture, train split
RATE_KEY = {"classification": "tokenprob", "generation": "generation", "multiple_choice": "multiple_choice"}


def train_examples(task: str, data_cfg: dict) -> int:
    if data_cfg.get("train_fraction"):
        assert task == "tulu", f"no mixture size known for {task}"
        return math.floor(TULU_V2_MIXTURE * data_cfg["train_fraction"])
    return data_cfg["train_size"]


def finetune_rows(plan, measured: dict, lr_grid: int, path: str = "ours", steady: bool = False) -> list[dict]:
    """``path``: the benchmark's run to price with (``ours``, ``ours_compiled``); ``steady``: its rate
    without the CUDA graphs' captures, which a run of thousands of steps spreads thin."""

    def rate_of(r: dict) -> float:
        run = r[path]
        return run["cuda_graphs"]["tokens_per_s_without_captures"] if steady and "cuda_graphs" in run else (
            run["tokens_per_s"])  # fmt: skip

    rates = {(r["profile"], r["method"]): rate_of(r) for r in measured["finetune"]}
    rows = []
    for task in plan.train_tasks:
        cfg = plan.finetune_configs[task]
        runs = [m for m in plan.training_runs if m.train_task == task]
        n = train_examples(task, plan.data_configs[task])
        steps = count_steps(n, cfg)
        tokens = steps * cfg["batch_size"] * cfg["grad_accum"] * TOKENS_PER_EXAMPLE[task]
        method = "lora" if all(m.method == "lora" for m in runs) else "full"
        rate = rates[("xsum" if task in LONG else "mnli", method)]
        rows.append({"stage": "finetune", "name": task, "jobs": len(runs) * lr_grid, "items": n * cfg["epochs"],
                     "tokens": tokens, "seconds_per_job": tokens / rate,
                     "hours": len(runs) * lr_grid * tokens / rate / 3600, "assumed": task in ASSUMED})  # fmt: skip
    return rows


def eval_rates(e: dict, mode: str | None = None, fewshot: str = "per_item") -> dict[str, float]:
    """Items/s of each scoring path in one measured evaluation (``bench_gpu.py``'s ``evaluate`` entry).

    ``mode``: the paths as they ran (``today``, ``eager``, ``compiled``), for files that time
    several; None for files with one set of paths. ``fewshot: fixed`` takes TokenProb and
    generation with fixed shots where the file measured them: from the shared prefix's cache, but
    compiled generation as whole prompts, as the evaluator runs them.
    """
    paths = e[mode] if mode else e
    rates = {k: paths[k]["items_per_s"] for k in RATE_KEY.values() if k in paths}
    if fewshot == "fixed":
        for kind, r in e.get("fixed_shots", {}).items():
            whole = kind == "generation" and mode == "compiled" and not PREFIX_WHEN_COMPILED  # as generate_greedy runs
            rates[kind] = r["whole" if whole else "shared_prefix"]["items_per_s"]
    return rates


def evaluation_rows(plan, measured: dict, batch_size: int, lr_grid: int, mode: str | None = None,
                    fewshot: str = "per_item") -> list[dict]:  # fmt: skip
    evals = {e["batch_size"]: e for e in measured["evaluate"]}
    if batch_size not in evals:
        raise SystemExit(f"no evaluation measured at batch size {batch_size}: {sorted(evals)}")
    rates = eval_rates(evals[batch_size], mode, fewshot)
    jobs: dict[str, int] = {}
    for model in plan.models:
        for ev in model.evaluations:
            jobs[ev.eval_set] = jobs.get(ev.eval_set, 0) + len(ev.formats) * (1 if model.is_base else lr_grid)
    rows = []
    if mode == "compiled":
        # Compilation, once per evaluation job (one model): the first pass's extra time over the
        # second, for each compiled path the study's eval sets use.
        kinds = {RATE_KEY[get_dataset(name).task.kind] for name in jobs}
        paths = evals[batch_size][mode]
        compile_s = sum(paths[k]["first_pass_s"] - paths[k]["seconds"] for k in kinds if k in paths)
        n_models = sum(1 if m.is_base else lr_grid for m in plan.models)
        rows.append({"stage": "evaluate (compilation)", "name": "torch.compile", "jobs": n_models, "items": None,
                     "tokens": None, "seconds_per_job": compile_s, "hours": n_models * compile_s / 3600,
                     "assumed": False})  # fmt: skip
    for name, n_jobs in sorted(jobs.items()):
        kind = get_dataset(name).task.kind
        rate = rates[RATE_KEY[kind]]
        rows.append({"stage": f"evaluate ({kind})", "name": name, "jobs": n_jobs, "items": EVAL_ITEMS[name],
                     "tokens": None, "seconds_per_job": EVAL_ITEMS[name] / rate,
                     "hours": n_jobs * EVAL_ITEMS[name] / rate / 3600, "assumed": name in ASSUMED})  # fmt: skip
    return rows


def estimate(plan, measured: dict, batch_size: int = 16, lr_grid: int = 1, evaluated: dict | None = None,
             mode: str | None = None, fewshot: str = "per_item", finetune_path: str = "ours",
             steady: bool = False) -> pd.DataFrame:  # fmt: skip
    """One row per training task and per eval set: jobs, seconds a job, GPU-hours in all.

    ``evaluated``: another benchmark file for the evaluation rates (``measured``'s otherwise).
    """
    evals = evaluation_rows(plan, evaluated or measured, batch_size, lr_grid, mode, fewshot)
    return pd.DataFrame(finetune_rows(plan, measured, lr_grid, finetune_path, steady) + evals)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measured", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--lr-grid", type=int, default=1)
    p.add_argument("--eval-measured", default=None, help="evaluation rates from this file instead")
    p.add_argument("--eval-mode", default=None, help="today, eager or compiled, in files that time each")
    p.add_argument("--fewshot", choices=["per_item", "fixed"], default="per_item")
    p.add_argument("--finetune-path", choices=["ours", "ours_compiled"], default="ours",
                   help="ours_compiled: the compiled loop (finetune.compile and cuda_graphs: auto)")  # fmt: skip
    p.add_argument("--steady", action="store_true", help="fine-tuning rates without the graphs' captures")
    a = p.parse_args()
    measured = json.loads(open(a.measured).read())
    evaluated = json.loads(open(a.eval_measured).read()) if a.eval_measured else None
    plan = build_plan(load_study(a.study), tempfile.mkdtemp())
    table = estimate(
        plan, measured, a.eval_batch_size, a.lr_grid, evaluated, a.eval_mode, a.fewshot, a.finetune_path, a.steady
    )
    device = measured["device"] + (f", evaluation on {evaluated['device']}" if evaluated else "")
    print(f"{device}; fine-tuning {a.finetune_path}{' (steady)' if a.steady else ''}; eval batch "
          f"{a.eval_batch_size} ({a.eval_mode or 'as measured'}, {a.fewshot} shots); lr grid x{a.lr_grid}")  # fmt: skip
    print(table.round(2).to_string(index=False))
    by_stage = table.groupby(table["stage"].str.split(" ").str[0])["hours"].sum()
    print({k: round(v, 1) for k, v in by_stage.items()}, f"total {table['hours'].sum():.1f} GPU-hours")


if __name__ == "__main__":
    main()
