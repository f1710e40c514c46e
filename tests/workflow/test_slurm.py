"""The workflow on a real SLURM cluster (tests/helpers/slurm_cluster.py), through Snakemake's SLURM executor.

Marker ``slurm``: ``make test-slurm`` runs these (CI does, after ``make test``); they skip, saying
why, where SLURM cannot be installed or started. The cluster has one node with two GPUs (dummy
devices: SLURM hands them out, the jobs run on the CPU).
"""

import re
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_snakemake, snakemake_command
from helpers.slurm_cluster import ClusterError, skip_reason, start_cluster

pytestmark = pytest.mark.slurm

MICRO = ROOT / "tests/configs/micro.yaml"
PERF = "results/micro/tables/performance.parquet"
# The repository's cluster profile, and what this test cluster needs besides: squeue for job
# states (no accounting database for sacct), quick status checks and file-system waits.
SLURM = [
    "--workflow-profile", str(ROOT / "profiles/slurm"), "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5", "--jobs", "4",
]  # fmt: skip
GPU_RULES = {"finetune", "evaluate_base", "evaluate_finetuned", "evaluate_selected", "dissect_loglik"}
EVAL_RULES = {"evaluate_base", "evaluate_finetuned", "evaluate_selected"}
AGGREGATE_RULES = {"performance_table", "analysis_performance", "analysis_seeds", "analysis_change",
                   "analysis_transfer", "analysis_formats", "analysis_dynamics", "report_table_performance",
                   "report_table_seeds", "report_table_change", "report_table_formats", "report_table_transfer",
                   "all"}  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    if reason := skip_reason():
        pytest.skip(reason)
    try:
        # The node may be larger than the machine: the profile asks for 32-64 GB per GPU job.
        c = start_cluster(cpus=16, mem_mb=256_000, gpus=2)
    except ClusterError as exc:
        pytest.skip(f"the SLURM test cluster did not start: {exc}")
    yield c
    c.stop()


def executed_rules(log: str) -> list[str]:
    """The rule of every job Snakemake ran, from its log ("rule X:" / "localrule X:" blocks, indented
    under "Group job ..." for the jobs of a group)."""
    return re.findall(r"^\s*(?:local)?rule (\w+):$", log, flags=re.MULTILINE)


def comment(call: str) -> str:
    """An sbatch call's --comment: rule_<rule>[_wildcards_...], or rule_<group>_<its rules> for a group."""
    return re.search(r"--comment '?(\S+?)'?(?: |$)", call).group(1)


def shown(call: str) -> str:
    """An sbatch call as the log prints it: its options, without the job's long command."""
    return "sbatch " + call.split(" --wrap")[0]


def submissions(log: str) -> int:
    return len(re.findall(r"has been submitted with SLURM jobid", log))


def study_on_slurm(cluster, workdir, configfile, *targets, timeout=1200):
    before = len(cluster.sbatch_calls())
    out = run_snakemake(workdir, configfile, *targets, *SLURM, timeout=timeout, env=cluster.env)
    calls = cluster.sbatch_calls()[before:]
    print(f"{len(calls)} sbatch calls; the first: {shown(calls[0]) if calls else 'none'}")
    assert out.returncode == 0, out.stderr[-6000:]
    return out.stdout + out.stderr, calls


@pytest.fixture(scope="module")
def micro_pair(cluster, tmp_path_factory):
    """The micro study's performance table, once run locally and once through SLURM."""
    local = tmp_path_factory.mktemp("local")
    out = run_snakemake(local, MICRO, PERF, timeout=900)
    assert out.returncode == 0, out.stderr[-5000:]
    on_slurm = tmp_path_factory.mktemp("slurm")
    start = time.time()
    log, calls = study_on_slurm(cluster, on_slurm, MICRO, PERF)
    print(f"micro study on SLURM: {time.time() - start:.0f} s")
    return local, on_slurm, log, calls


def test_micro_study_on_slurm_equals_local_run(micro_pair):
    local, on_slurm, log, calls = micro_pair
    ours = pd.read_parquet(on_slurm / PERF)
    theirs = pd.read_parquet(local / PERF)
    assert len(ours) == 48
    pd.testing.assert_frame_equal(ours, theirs)


def test_gpu_jobs_ask_for_one_gpu_and_small_jobs_share_submissions(micro_pair):
    _, _, log, calls = micro_pair
    rules = executed_rules(log)
    remote = [r for r in rules if r != "all"]
    # Each GPU job is its own sbatch call asking for one GPU; each other call asks for none.
    gpu_calls = [c for c in calls if "--gpus=1" in c]
    assert len(gpu_calls) == sum(r in GPU_RULES for r in remote) > 0
    assert all(any(comment(c).startswith(f"rule_{r}") for r in GPU_RULES) for c in gpu_calls), gpu_calls
    assert not any("--gpus" in c or "--gres" in c for c in calls if c not in gpu_calls)
    # Data preparation (12 jobs), lr selection (4) and the tables go out as one call per group:
    # 29 jobs in 15 calls, 11 of them (5 fine-tunes, 6 evaluations) with one GPU (docs/slurm.md).
    print(f"{len(remote)} jobs in {len(calls)} sbatch calls ({len(gpu_calls)} with one GPU each); a GPU job's:")
    print(shown(gpu_calls[0]))
    assert (len(remote), len(calls), submissions(log), len(gpu_calls)) == (29, 15, 15, 11)
    groups = sorted(comment(c).split("_")[1] for c in calls if "wildcards" not in comment(c))
    assert groups == ["prepare", "pretrain", "select", "tables"], groups


def test_changed_evaluation_setting_resubmits_only_evaluation_and_tables(cluster, micro_pair, tmp_path):
    _, on_slurm, _, _ = micro_pair
    config = yaml.safe_load(MICRO.read_text())
    config["evaluate"]["max_new_tokens"]["generation"] = 4
    changed = tmp_path / "micro.yaml"
    changed.write_text(yaml.safe_dump(config))
    log, calls = study_on_slurm(cluster, on_slurm, changed, PERF)
    rules = set(executed_rules(log))
    assert {"evaluate_base", "evaluate_selected"} <= rules
    assert rules <= EVAL_RULES | AGGREGATE_RULES, rules - EVAL_RULES - AGGREGATE_RULES
    # What was submitted: evaluation jobs and the "tables" group, nothing upstream of them.
    assert calls and all(comment(c).startswith(("rule_evaluate_", "rule_tables_")) for c in calls), calls


# --- preemption -----------------------------------------------------------------------------

# One fine-tune long enough to be interrupted: the toy study's model size, 200 steps.
PREEMPT = {
    "study": "preempt",
    "seed": 3,
    "checkpoints": {"suite": "toy", "toy": {"steps": 8, "n_checkpoints": 2, "first_step": 4, "batch_size": 8,
                                            "seq_len": 64, "vocab_size": 1024, "tokenizer_docs": 300,
                                            "model": {"hidden_size": 192, "intermediate_size": 512, "layers": 4,
                                                      "heads": 4}}},
    "data": {"toy_sizes": {"train": 100, "validation": 20, "test": 20}, "train_size": 64, "max_eval_examples": 8,
             "fewshot_pool_size": 4},
    "train_tasks": ["toy_nli"],
    "eval_sets": ["toy_nli"],
    "finetune": {"checkpoints": ["step8"], "lrs": [0.001], "epochs": 30, "batch_size": 8, "max_steps": 200,
                 "save_every": 25},
}  # fmt: skip
RUN_DIR = "results/preempt/finetune/step8/toy_nli/full/lr0.001/seed0"
STATE = "results/preempt/.state/finetune/step8/toy_nli/full/lr0.001/seed0/state.pt"
LOG = "results/preempt/logs/finetune/step8/toy_nli/full/lr0.001/seed0.log"


def running_job(cluster, rule: str) -> str | None:
    out = cluster.run("squeue", "--noheader", "--states=RUNNING", "--format=%i %k").stdout
    ids = [line.split()[0] for line in out.splitlines() if f"rule_{rule}" in line]
    return ids[0] if ids else None


def test_requeued_finetune_resumes_and_matches_uninterrupted_run(cluster, tmp_path):
    config = tmp_path / "preempt.yaml"
    config.write_text(yaml.safe_dump(PREEMPT))
    target = f"{RUN_DIR}/summary.json"
    reference = tmp_path / "reference"
    out = run_snakemake(reference, config, target, timeout=600)
    assert out.returncode == 0, out.stderr[-5000:]

    workdir = tmp_path / "slurm"
    workdir.mkdir()
    cmd = snakemake_command(workdir, config, target, *SLURM)
    proc = subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Requeue the fine-tune once it has saved its state, while it still runs.
        deadline = time.monotonic() + 300
        while not ((workdir / STATE).exists() and (job := running_job(cluster, "finetune"))):
            assert proc.poll() is None and time.monotonic() < deadline, "the fine-tune never ran past a save"
            time.sleep(0.1)
        cluster.run("scontrol", "requeue", job)
        cluster.wait_job(job, ("PENDING",), timeout=30)
        requeued_at = time.monotonic()
        log, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    assert proc.returncode == 0, log[-6000:]
    print(f"requeued job {job}; the workflow finished {time.monotonic() - requeued_at:.0f} s later")
    # The job ran again (SLURM's restart), and the trainer took up its saved state.
    assert re.search(r"resuming at step (\d+) of 200", (workdir / LOG).read_text())
    assert not (workdir / STATE).exists()  # removed once the run finished
    ours = pd.read_parquet(workdir / RUN_DIR / "train_log.parquet")
    theirs = pd.read_parquet(reference / RUN_DIR / "train_log.parquet")
    assert list(ours["step"]) == list(range(1, 201))
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-6, atol=1e-7)
    from safetensors.torch import load_file

    ours_w = load_file(workdir / RUN_DIR / "model/model.safetensors")
    theirs_w = load_file(reference / RUN_DIR / "model/model.safetensors")
    assert ours_w.keys() == theirs_w.keys()
    assert max(float((ours_w[k] - theirs_w[k]).abs().max()) for k in ours_w) < 1e-5
