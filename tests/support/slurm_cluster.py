"""A real one-node Slurm cluster for tests: private munged, slurmctld and slurmd.

Everything lives in a temporary folder (config, key, sockets, state, logs) and on free ports, so
it never touches a system Slurm. Needs root (slurmd runs jobs as their submitting user); when the
Debian packages are missing and we are root, they are installed with apt-get.

    with SlurmCluster() as cluster:
        job = cluster.submit(script_path)
        cluster.wait(job, {"COMPLETED"})
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.path.exists(f"{d}/{name}")), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_slurm_installed() -> None:
    """Skip when not root; install the Debian packages when missing (root only)."""
    if os.geteuid() != 0:
        pytest.skip("Slurm end-to-end test needs root (slurmd runs jobs as other users); run as root or in CI")
    if all(_which(d) for d in DAEMONS) and _which("sbatch"):
        return
    if not shutil.which("apt-get"):
        pytest.fail("slurmctld/slurmd/munged missing and no apt-get to install slurm-wlm and munge")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode:
            pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


SLURM_CONF = """\
ClusterName=fstest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobRequeue=1
ReturnToService=2
KillWait=60
MinJobAge=600
InactiveLimit=0
Waittime=0
NodeName={host} NodeAddr=127.0.0.1 CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


class SlurmCluster:
    """Start munged + slurmctld + slurmd on this machine; stop them (by pid) on exit."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="fs-slurm-"))
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root, ctld_port=_free_port(),
                                               slurmd_port=_free_port()))
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn([_which("munged"), "--foreground", "--force", f"--key-file={key}",
                     f"--socket={self.root}/munge.socket", f"--pid-file={self.root}/munged.pid",
                     f"--log-file={self.root}/munged.log", f"--seed-file={self.root}/munge.seed"],
                    "munged.out")
        self._wait_for(lambda: (self.root / "munge.socket").exists(), 20, "munged socket")
        self._spawn([_which("slurmctld"), "-D", "-c", "-f", str(self.conf)], "slurmctld.out")
        self._wait_for(lambda: self._run(["scontrol", "ping"]).stdout.count("UP") > 0, 60, "slurmctld")
        self._spawn([_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host], "slurmd.out")
        self._wait_for(self._node_idle, 90, "slurmd node idle")

    def _spawn(self, argv: list[str], log: str) -> None:
        out = open(self.root / log, "w")
        self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))

    def _node_idle(self) -> bool:
        state = self._run(["sinfo", "-h", "-o", "%t"]).stdout.strip()
        return state.startswith("idle") or state.startswith("mix")

    def _wait_for(self, check, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) waiting for {what}:\n"
                                       + self.logs())
            if check():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}:\n{self.logs()}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log", "slurmctld.out", "slurmd.out", "munged.out"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    # -- jobs ------------------------------------------------------------------------------
    def _run(self, argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], env=self.env, capture_output=True,
                              text=True, check=check, timeout=60)

    def job_info(self, job_id: str) -> dict:
        out = self._run(["scontrol", "show", "job", "-o", job_id]).stdout
        info = {}
        for item in out.split():
            if "=" in item:
                key, value = item.split("=", 1)
                info[key] = value
        return info

    def wait(self, job_id: str, states: set[str], timeout: float = 600) -> dict:
        """Poll until the job reaches one of `states` (e.g. COMPLETED); fail on a terminal other."""
        terminal = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                    "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
        deadline = time.time() + timeout
        info: dict = {}
        while time.time() < deadline:
            info = self.job_info(job_id)
            state = info.get("JobState", "")
            if state in states:
                return info
            if state in terminal:
                raise AssertionError(f"job {job_id} ended {state}: {info}\n{self.logs()}")
            time.sleep(1)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout}s: {info}\n{self.logs()}")

    def release_requeued(self, job_id: str, timeout: float = 120) -> dict:
        """Wait for the job to be requeued (PENDING, Restarts >= 1), then let it start now instead
        of after Slurm's requeue delay (BeginTime = requeue time + 2 minutes)."""
        deadline = time.time() + timeout
        info: dict = {}
        while time.time() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") == "PENDING" and int(info.get("Restarts", "0")) >= 1:
                # slurmd revokes the old instance's credential with one-second resolution: a relaunch
                # within that second is killed as "credential revoked" (the requeue delay exists for
                # this), so start it a few seconds on rather than now.
                time.sleep(3)
                self._run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
                return info
            if info.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED"}:
                raise AssertionError(f"job {job_id} ended {info.get('JobState')} instead of requeueing: "
                                     f"{info}\n{self.logs()}")
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} was not requeued: {info}\n{self.logs()}")
