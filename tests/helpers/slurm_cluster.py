"""A real single-node SLURM cluster on localhost, for tests that submit jobs through SLURM.

It needs SLURM and munge (tests/helpers/slurm/install.sh, as root: Debian 12 has SLURM 22.05) and root,
as every daemon runs as root. The node's GPUs are dummy character devices: SLURM hands them out and
sets CUDA_VISIBLE_DEVICES, but there is no GPU behind them.

    @pytest.fixture(scope="session")
    def slurm():
        if reason := skip_reason():
            pytest.skip(reason)
        try:
            cluster = start_cluster()
        except ClusterError as exc:  # its message ends with the daemons' log tails
            pytest.skip(str(exc))
        yield cluster
        cluster.stop()

Commands run with ``env=cluster.env`` reach the cluster: ``cluster.sbatch("--wrap", "true")``, or
``snakemake --executor slurm --slurm-status-command squeue ...`` (tests/workflow/test_slurm.py has the
flags this cluster needs). ``python tests/helpers/slurm_cluster.py`` starts a cluster, checks GPUs,
requeue, preemption and scancel, and stops it.

Besides the default partition, partition ``urgent`` (:data:`URGENT`) preempts its jobs: a job there
that needs their GPUs has them requeued (with ``sbatch --requeue``) or ended as PREEMPTED (without:
the cluster's ``JobRequeue=0``). A job step's processes are tracked by process group, as a real
cluster's cgroup would; see slurm/slurm.conf.in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

HERE = Path(__file__).with_name("slurm")
TEMPLATE = HERE / "slurm.conf.in"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "slurmstepd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
# Wrapped in <root>/bin so that they find this cluster without SLURM_CONF (see _write_shims).
SHIMMED = CLIENTS + ("salloc", "sacct", "sacctmgr", "sshare", "sstat", "sattach", "sbcast")
# slurmd puts a Unix socket per job step in its spool folder, and such a path has at most 107 bytes:
# a pytest tmp_path is often too long, so the cluster lives in a short folder of /tmp.
MAX_ROOT_LEN = 60
NODE = "node1"
# The partition whose jobs preempt those of the default one (PreemptMode=REQUEUE).
URGENT = "urgent"


class ClusterError(RuntimeError):
    """The cluster did not start; the message ends with the daemons' log tails."""


def _which(name: str) -> str | None:
    # The daemons are in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def skip_reason() -> str | None:
    """Why a SLURM cluster cannot be started here, or None when it can be tried."""
    missing = [name for name in DAEMONS + CLIENTS if not _which(name)]
    if missing:
        return f"SLURM/munge not installed (no {', '.join(missing)}): run tests/helpers/slurm/install.sh as root"
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root; not root here"
    return None


@dataclass
class Cluster:
    root: Path
    partition: str
    gpus: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """os.environ for a client of this cluster: its bin/ first on PATH, SLURM_CONF set.

        SLURM_* of an enclosing job would confuse the clients, so they are left out.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin}:{env.get('PATH', '')}:/usr/sbin"
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30, cwd=None) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, cwd=cwd, capture_output=True, text=True, check=check, timeout=timeout)

    def sbatch(self, *args: str, cwd: str | Path | None = None) -> str:
        """Submit a batch job; returns its id."""
        return self.run("sbatch", "--parsable", *args, cwd=cwd).stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str:
        """PENDING, RUNNING, COMPLETED, FAILED, CANCELLED...; "" once SLURM forgot it (MinJobAge)."""
        res = self.run("squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T", check=False)
        return res.stdout.strip()

    def wait_job(self, job_id: str, states: tuple[str, ...], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.job_state(job_id)) not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state or 'unknown'} after {timeout:.0f} s")
            time.sleep(0.2)
        return state

    def sbatch_calls(self) -> list[str]:
        """The arguments of every sbatch run through this cluster's bin/, one string per call."""
        log = self.root / "sbatch.calls"
        return log.read_text().splitlines() if log.exists() else []

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            # The daemon's stderr: all its log lines, without timestamps (<name>.log has those),
            # and those from before it could open its log.
            out = self.root / f"{name}.out"
            text = out.read_text(errors="replace").splitlines()[-lines:] if out.exists() else ["(none)"]
            parts.append(f"--- {out} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def node_state(self) -> str:
        try:
            # sinfo retries for a while when slurmctld is not up yet; the caller polls anyway.
            res = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=2)
        except subprocess.TimeoutExpired:
            return "sinfo timed out"
        if res.returncode != 0:
            return f"sinfo failed: {res.stderr.strip()}"
        # One line per partition the node is in.
        return " ".join(sorted(set(res.stdout.split())))

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited with {proc.returncode}\n{self.log_tail()}")
            if (state := self.node_state()) == "idle":
                return
            time.sleep(0.2)
        raise ClusterError(f"node not idle after {timeout:.0f} s (state: {state!r})\n{self.log_tail()}")

    def stop(self) -> None:
        """Cancel every job, stop the daemons and delete the cluster's folder."""
        ctld = self.procs.get("slurmctld")
        if ctld and ctld.poll() is None:
            # A job's processes belong to its slurmstepd, which outlives slurmd: let SLURM end them.
            self.run("scancel", f"--user={os.getuid()}", check=False, timeout=10)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                res = self.run("squeue", "--noheader", "--states=RUNNING,COMPLETING", check=False, timeout=10)
                if res.returncode != 0 or not res.stdout.strip():
                    break
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in _stepds_of(self.conf):  # in case scancel could not reach them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _stepds_of(conf: Path) -> list[int]:
    """This cluster's slurmstepd processes: they have slurmd's environment, our SLURM_CONF included."""
    marker = f"SLURM_CONF={conf}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
    return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_shims(cluster: Cluster) -> None:
    # Snakemake's slurm-jobstep executor drops SLURM_CONF (all SLURM_* but the job's ids) before it
    # calls srun inside a job, and srun then looks for /etc/slurm/slurm.conf. These wrappers set
    # SLURM_CONF themselves and reach the job through PATH (sbatch exports the submitter's
    # environment), so /etc is left alone. sbatch's wrapper also logs its arguments.
    cluster.bin.mkdir()
    # The real commands, not another test cluster's wrappers.
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "..", "slurm.conf").exists())
    # One line, written at once, per call (the executor submits from two threads).
    log = f'line=$(printf "%s" "$*" | tr "\\n" " "); printf "%s\\n" "$line" >> {cluster.root}/sbatch.calls\n'
    for name in SHIMMED:
        if real := shutil.which(name, path=path):
            shim = cluster.bin / name
            shim.write_text(f'#!/bin/sh\n{log if name == "sbatch" else ""}SLURM_CONF={cluster.conf} exec {real} "$@"\n')
            shim.chmod(0o755)


def _write_config(cluster: Cluster, cpus: int, mem_mb: int) -> None:
    root = cluster.root
    for sub in ("state", "spool", "dev"):
        (root / sub).mkdir()
    # SLURM refuses regular files as GPU devices; these have /dev/null's numbers, harmless to open.
    for i in range(cluster.gpus):
        os.mknod(root / "dev" / f"gpu{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    gres = "".join(f"NodeName={NODE} Name=gpu File={root}/dev/gpu{i}\n" for i in range(cluster.gpus))
    (root / "gres.conf").write_text("AutoDetect=off\n" + gres)
    (root / "plugstack.conf").write_text("")
    conf = Template(TEMPLATE.read_text()).substitute(
        node=NODE,
        root=root,
        ctld_port=_free_port(),
        slurmd_port=_free_port(),
        cpus=cpus,
        mem_mb=mem_mb,
        node_gres=f"Gres=gpu:{cluster.gpus}" if cluster.gpus else "",
        partition=cluster.partition,
    )
    cluster.conf.write_text(conf)
    _write_shims(cluster)


def start_cluster(
    parent: str | Path = "/tmp",
    gpus: int = 2,
    cpus: int = 4,
    mem_mb: int = 8000,
    partition: str = "debug",
    timeout: float = 30,
) -> Cluster:
    """Start munged, slurmctld and slurmd in a new folder of ``parent``, with one node and partition.

    ``cpus`` and ``mem_mb`` may exceed the machine's: SLURM takes the node's size from slurm.conf.
    Returns once the node is idle; raises ClusterError, with the daemons' log tails, when it is not.
    """
    if reason := skip_reason():
        raise ClusterError(reason)
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir=parent))
    cluster = Cluster(root=root, partition=partition, gpus=gpus)
    if len(str(root)) > MAX_ROOT_LEN:
        cluster.stop()
        raise ClusterError(f"cluster folder {root} is too long for the sockets SLURM makes in it")
    key = root / "munge.key"
    # Clients reach munge's socket through this folder (mkdtemp makes it 0700).
    root.chmod(0o755)
    # munged refuses to start when it finds a folder on its paths writable by others (as /tmp is
    # on some machines); --force makes that a warning. --syslog keeps its log on stderr only.
    daemons = {
        "munged": [
            _which("munged"), "--foreground", "--force", "--syslog", f"--socket={root}/munge.sock",
            f"--key-file={key}", f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed",
        ],
        "slurmctld": [_which("slurmctld"), "-D", "-f", str(cluster.conf)],
        "slurmd": [_which("slurmd"), "-D", "-f", str(cluster.conf), "-N", NODE],
    }  # fmt: skip
    try:
        _write_config(cluster, cpus, mem_mb)
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        for name, cmd in daemons.items():
            with open(root / f"{name}.out", "w") as out:
                cluster.procs[name] = subprocess.Popen(
                    cmd, env=cluster.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            if name == "munged":
                deadline = time.monotonic() + 10
                while not (root / "munge.sock").exists() and cluster.procs[name].poll() is None:
                    if time.monotonic() > deadline:
                        raise ClusterError(f"munged made no socket in 10 s\n{cluster.log_tail()}")
                    time.sleep(0.05)
        cluster.wait_idle(timeout)
    except ClusterError:
        cluster.stop()
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}\n{cluster.log_tail()}"
        cluster.stop()
        raise ClusterError(message) from exc
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def slurm_cluster(**kwargs) -> Iterator[Cluster]:
    cluster = start_cluster(**kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()


def _self_test() -> None:
    t0 = time.monotonic()
    with slurm_cluster() as c, tempfile.TemporaryDirectory() as tmp:
        print(f"cluster up in {time.monotonic() - t0:.1f} s ({c.root})")
        # Two 1-GPU jobs run at once, on different GPUs; a third waits for one of them.
        gpu_jobs = [
            c.sbatch("--gres=gpu:1", "--wrap", "echo $CUDA_VISIBLE_DEVICES; sleep 3", cwd=tmp) for _ in range(3)
        ]
        for j in gpu_jobs[:2]:
            c.wait_job(j, ("RUNNING",), timeout=20)
        print(f"2 GPU jobs running {time.monotonic() - t0:.1f} s after the start")
        assert c.job_state(gpu_jobs[2]) == "PENDING"
        for j in gpu_jobs:
            c.wait_job(j, ("COMPLETED",))
        seen = [Path(tmp, f"slurm-{j}.out").read_text().strip() for j in gpu_jobs]
        assert sorted(seen[:2]) == ["0", "1"], seen
        print(f"3 GPU jobs, CUDA_VISIBLE_DEVICES {seen}, done {time.monotonic() - t0:.1f} s")
        # A batch job may be requeued if it asks (JobRequeue=0), and runs again once eligible
        # (cred_expire, 10 s).
        job = c.sbatch("--requeue", "--gres=gpu:1", "--wrap", "echo run $SLURM_RESTART_COUNT; sleep 60", cwd=tmp)
        other = c.sbatch("--gres=gpu:1", "--wrap", "sleep 60", cwd=tmp)
        c.wait_job(job, ("RUNNING",))
        c.wait_job(other, ("RUNNING",))
        assert c.run("scontrol", "requeue", other, check=False).returncode != 0  # not requeueable
        t1 = time.monotonic()
        c.run("scontrol", "requeue", job)
        c.wait_job(job, ("PENDING",))
        c.wait_job(job, ("RUNNING",), timeout=40)
        print(f"requeued job ran again after {time.monotonic() - t1:.1f} s")
        # An urgent job that needs every GPU preempts both: the requeueable one waits and runs again,
        # the other ends PREEMPTED.
        urgent = c.sbatch("-p", URGENT, f"--gres=gpu:{c.gpus}", "--wrap", "sleep 1", cwd=tmp)
        assert c.wait_job(other, ("PREEMPTED",), timeout=20) == "PREEMPTED"
        c.wait_job(urgent, ("COMPLETED",), timeout=40)
        c.wait_job(job, ("RUNNING",), timeout=40)
        print(f"preempted: the requeueable job ran again, the other ended PREEMPTED ({time.monotonic() - t1:.1f} s)")
        c.run("scancel", job)
        assert c.wait_job(job, ("CANCELLED",)) == "CANCELLED"
        print(f"scancel ok; sbatch calls logged: {len(c.sbatch_calls())}")
        # stop() must also end a job still running.
        c.sbatch("--wrap", "sleep 300", cwd=tmp)
    assert not _stepds_of(c.conf), "slurmstepd left behind"
    print(f"stopped; all done in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    _self_test()
