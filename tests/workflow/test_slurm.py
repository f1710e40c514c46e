"""The workflow on a real SLURM cluster (tests/helpers/slurm_cluster.py), through Snakemake's SLURM executor.

Marker ``slurm``: ``make test-slurm`` runs these (CI does, after ``make test``); they skip, saying
why, where SLURM cannot be installed or started. The cluster has one node with two GPUs (dummy
devices: SLURM hands them out, the jobs run on the CPU).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_snakemake, snakemake_command
from helpers.slurm_cluster import URGENT, ClusterError, skip_reason, start_cluster

pytestmark = pytest.mark.slurm

MICRO = ROOT / "tests/configs/micro.yaml"
PERF = "results/micro/tables/performance.parquet"
SLOW_SAVE_DIR = ROOT / "tests/helpers/slow_save"  # its sitecustomize slows the trainer's saves
# The repository's cluster profile, and what this test cluster needs besides: squeue for job
# states (no accounting database for sacct), quick status checks and file-system waits.
SLURM = [
    "--workflow-profile", str(ROOT / "profiles/slurm"), "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5", "--jobs", "4",
]  # fmt: skip
GPU_RULES = {"finetune", "evaluate_base", "evaluate_finetuned", "dissect_loglik"}
EVAL_RULES = {"evaluate_base", "evaluate_finetuned"}
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
    # Every job may be requeued by SLURM (preemption, a failed node), and each fine-tune asks for
    # SIGTERM to its job step 10 min before its time limit, to save its state (docs/slurm.md).
    assert all(" --requeue" in c for c in calls), [shown(c) for c in calls if " --requeue" not in c]
    finetunes = [c for c in calls if comment(c).startswith("rule_finetune")]
    assert len(finetunes) == 5 and all(" --signal=TERM@600 " in c for c in finetunes), [shown(c) for c in finetunes]
    assert not any("--signal" in c for c in calls if c not in finetunes)


def test_changed_evaluation_setting_resubmits_only_evaluation_and_tables(cluster, micro_pair, tmp_path):
    _, on_slurm, _, _ = micro_pair
    config = yaml.safe_load(MICRO.read_text())
    config["evaluate"]["max_new_tokens"]["generation"] = 4
    changed = tmp_path / "micro.yaml"
    changed.write_text(yaml.safe_dump(config))
    log, calls = study_on_slurm(cluster, on_slurm, changed, PERF)
    rules = set(executed_rules(log))
    assert {"evaluate_base", "evaluate_finetuned"} <= rules
    assert rules <= EVAL_RULES | AGGREGATE_RULES, rules - EVAL_RULES - AGGREGATE_RULES
    # What was submitted: evaluation jobs and the "tables" group, nothing upstream of them.
    assert calls and all(comment(c).startswith(("rule_evaluate_", "rule_tables_")) for c in calls), calls


SHARDED_RUN = "results/micro/finetune/step12/toy_nli/full/lr0.001/seed0"


def test_a_run_on_two_gpus_asks_for_them_on_one_node_and_trains_as_one(cluster, micro_pair, tmp_path):
    """finetune.gpus: 2 (ptft.finetune.sharded): one sbatch call for both GPUs of one node, two processes
    in the job (gloo on the CPU here), and the losses of the one-process local run."""
    local, on_slurm, _, _ = micro_pair
    work = tmp_path / "work"  # a copy, so the other tests' workflow state is left as it was
    shutil.copytree(on_slurm, work, symlinks=True)
    shutil.rmtree(work / SHARDED_RUN)
    config = yaml.safe_load(MICRO.read_text())
    config["finetune"]["per_task"]["toy_nli"]["gpus"] = 2
    changed = tmp_path / "micro.yaml"
    changed.write_text(yaml.safe_dump(config))
    log, calls = study_on_slurm(cluster, work, changed, f"{SHARDED_RUN}/summary.json")
    assert executed_rules(log) == ["finetune"], executed_rules(log)  # gpus is no run setting: nothing else re-runs
    (call,) = calls
    print(shown(call))
    assert all(option in call.split() for option in ("--gpus=2", "--nodes=1", "--cpus-per-task=8")), shown(call)
    assert json.loads((work / SHARDED_RUN / "summary.json").read_text())["processes"] == 2
    ours = pd.read_parquet(work / SHARDED_RUN / "train_log.parquet")
    theirs = pd.read_parquet(local / SHARDED_RUN / "train_log.parquet")
    assert list(ours["tokens"]) == list(theirs["tokens"])
    pd.testing.assert_series_equal(ours["loss"], theirs["loss"], atol=1e-5, rtol=0)


# --- interruption: requeue, preemption, the time-limit signal ------------------------------

# One fine-tune long enough to be interrupted between two of its periodic saves (steps 100 and
# 200 of 240): the toy study's model size, about 50-70 ms a step here.
SAVE_EVERY = 100
STEPS = 240
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
    "finetune": {"checkpoints": ["step8"], "lrs": [0.001], "epochs": 30, "batch_size": 8, "max_steps": STEPS,
                 "save_every": SAVE_EVERY},
}  # fmt: skip
RUN_DIR = "results/preempt/finetune/step8/toy_nli/full/lr0.001/seed0"
STATE = "results/preempt/.state/finetune/step8/toy_nli/full/lr0.001/seed0/state.pt"
LOG = "results/preempt/logs/finetune/step8/toy_nli/full/lr0.001/seed0.log"
# The trainer's log lines begin with their time (ptft.cli): the signal's, then the save's.
TIME = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+: "
SIGNALLED = re.compile(rf"{TIME}received SIGTERM: saving the training state after this step\n(?:.*\n)*?"
                       rf".*?{TIME}saved training state at step (\d+) ")  # fmt: skip
# Each save of the fine-tunes on SLURM takes this many seconds more (tests/helpers/slow_save), as a
# large model's does: the state is then saved only if the job step waits for the trainer (the
# finetune rule's `exec`), within the 5 s slurmd leaves between SIGTERM and SIGKILL (max(KillWait, 5)).
SLOW_SAVE = 3


def running_job(cluster, rule: str) -> str | None:
    out = cluster.run("squeue", "--noheader", "--states=RUNNING", "--format=%i %k").stdout
    ids = [line.split()[0] for line in out.splitlines() if f"rule_{rule}" in line]
    return ids[0] if ids else None


def wait_for_log(path, pattern: re.Pattern, proc, timeout: float, what: str) -> tuple[re.Match, str]:
    """The first match of ``pattern`` in the log at ``path``, polled while the workflow runs."""
    deadline = time.monotonic() + timeout
    text = earlier = ""
    while True:
        new = path.read_text(errors="replace") if path.exists() else ""
        if len(new) < len(text):  # the next attempt of the job replaced it
            earlier = f"{earlier}{text[-2000:]}\n--- (the next attempt's log) ---\n"
        text = new
        if m := pattern.search(text):
            return m, text
        logs = f"the fine-tune's log:\n{earlier}{text[-2000:]}"
        assert proc.poll() is None, f"the workflow ended before {what}; {logs}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s; {logs}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def preempt_reference(tmp_path_factory):
    """The fine-tune run once locally, without interruption; and its time per step."""
    tmp = tmp_path_factory.mktemp("preempt")
    config = tmp / "preempt.yaml"
    config.write_text(yaml.safe_dump(PREEMPT))
    reference = tmp / "reference"
    out = run_snakemake(reference, config, f"{RUN_DIR}/summary.json", timeout=600)
    assert out.returncode == 0, out.stderr[-5000:]
    summary = yaml.safe_load((reference / RUN_DIR / "summary.json").read_text())
    assert summary["steps"] == STEPS
    step_s = summary["total_tokens"] / summary["tokens_per_s"] / STEPS
    print(f"reference fine-tune: {STEPS} steps, {1000 * step_s:.0f} ms a step")
    return config, reference, step_s


# How each interruption reaches the job, and what SLURM and Snakemake do then:
# - requeue: `scontrol requeue` (SIGTERM to every process of the job, SIGKILL KillWait = 2 s later);
#   SLURM runs the same job again, as the profile's `slurm-requeue` asks (the cluster's JobRequeue=0).
# - preemption: a job of the urgent partition needs both GPUs; the same signals, then SLURM requeues it.
# - time limit: `scancel --signal=TERM` reaches the job steps and not the batch shell, as the profile's
#   `--signal=TERM@600` does 10 min before the limit; the fine-tune saves and exits, the job FAILS,
#   and Snakemake's retry submits it again.
INTERRUPTIONS = {
    "requeue": (lambda cluster, job, cwd: cluster.run("scontrol", "requeue", job), 1),
    "preemption": (lambda cluster, job, cwd: cluster.sbatch("-p", URGENT, f"--gres=gpu:{cluster.gpus}", "--wrap",
                                                            "sleep 1", cwd=cwd), 1),
    "time-limit signal": (lambda cluster, job, cwd: cluster.run("scancel", "--signal=TERM", job), 2),
}  # fmt: skip


@pytest.mark.parametrize("interruption", list(INTERRUPTIONS))
def test_interrupted_finetune_resumes_at_the_signalled_step_and_matches_uninterrupted_run(
    cluster, preempt_reference, tmp_path, interruption
):
    config, reference, step_s = preempt_reference
    interrupt, submissions = INTERRUPTIONS[interruption]
    workdir = tmp_path / "slurm"
    workdir.mkdir()
    before = len(cluster.sbatch_calls())
    cmd = snakemake_command(workdir, config, f"{RUN_DIR}/summary.json", *SLURM)
    out = tmp_path / "snakemake.out"
    # sbatch and srun pass the submitter's environment on to the jobs: the slow save reaches the trainer.
    env = cluster.env
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SLOW_SAVE_DIR), env.get("PYTHONPATH")) if p)
    env["PTFT_TEST_SLOW_SAVE"] = str(SLOW_SAVE)
    with out.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    log_path = workdir / LOG
    try:
        # Interrupt the fine-tune 20 steps after its first periodic save, well before the next.
        periodic = re.compile(rf"saved training state at step {SAVE_EVERY} ")
        wait_for_log(log_path, periodic, proc, 300, f"periodic save at step {SAVE_EVERY}")
        job = running_job(cluster, "finetune")
        assert job, "the fine-tune's SLURM job is not running"
        time.sleep(20 * step_s)
        interrupted_at = time.monotonic()
        interrupt(cluster, job, tmp_path)
        # The trainer's log of this attempt, read before the next attempt replaces it.
        m, first_log = wait_for_log(log_path, SIGNALLED, proc, 60, "save after the SIGTERM")
        signalled = int(m.group(3))
        save_s = (datetime.fromisoformat(m.group(2)) - datetime.fromisoformat(m.group(1))).total_seconds()
        # It finishes in about a minute; one that waits on for a job that will never run again hangs.
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, out.read_text()[-6000:]
    final_log = log_path.read_text()
    resuming = re.search(rf"resuming at step (\d+) of {STEPS}", final_log)
    assert resuming, f"the next attempt did not resume; its log:\n{final_log[-3000:]}"
    resumed = int(resuming.group(1))
    calls = [c for c in cluster.sbatch_calls()[before:] if "rule_finetune" in c]
    took = time.monotonic() - interrupted_at
    print(f"{interruption}: job {job} signalled at step {signalled}, saved {save_s:.1f} s after the signal, resumed "
          f"at step {resumed} ({len(calls)} sbatch calls); the workflow finished {took:.0f} s later")  # fmt: skip
    # The save was the slow one, so the job step had to wait for it.
    assert save_s >= SLOW_SAVE, first_log[-3000:]
    # The trainer saved on the signal, between two periodic saves, and the next attempt took up
    # that state: not the periodic one of step 100.
    assert SAVE_EVERY < signalled < 2 * SAVE_EVERY and signalled % SAVE_EVERY != 0, first_log[-3000:]
    assert resumed == signalled, final_log[-3000:]
    # SLURM ran the same job again (requeue, preemption), or Snakemake submitted it again (a FAILED job).
    assert len(calls) == submissions, calls
    assert all("--requeue" in c for c in calls), calls
    assert not (workdir / STATE).exists()  # removed once the run finished
    ours = pd.read_parquet(workdir / RUN_DIR / "train_log.parquet")
    theirs = pd.read_parquet(reference / RUN_DIR / "train_log.parquet")
    assert list(ours["step"]) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-6, atol=1e-7)
    from safetensors.torch import load_file

    ours_w = load_file(workdir / RUN_DIR / "model/model.safetensors")
    theirs_w = load_file(reference / RUN_DIR / "model/model.safetensors")
    assert ours_w.keys() == theirs_w.keys()
    assert max(float((ours_w[k] - theirs_w[k]).abs().max()) for k in ours_w) < 1e-5
