"""Stop signals as a cluster delivers them: TERM (or USR1) to *every* process of a job (the node
supervisor, torchrun, both trainers and their loader workers), as Slurm signals every process of
a step. Both ranks commit one checkpoint and the job exits 75; resumed, it ends with the weights
and sample order of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from frozen_scale.train.checkpoint import committed_steps
from tests.support.core_fixtures import tiny_config_dict
from tests.support.dist_util import REPO, check, child_env, free_port, kill_tree, torchrun
from tests.e2e.test_resume import final_weights, max_abs_diff

EXIT_REQUEUE = 75
STEPS, PAUSE_AFTER = 10, 4
SECTIONS = dict(train={"steps": STEPS, "log_every": 2}, checkpoint={"every": 0, "keep_last": 3},
                data={"num_workers": 2}, debug={"log_sample_keys": True})


def write_cfg(tmp_path: Path, name: str, lm_dir, shards) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(lm_dir, shards, tmp_path / name, **SECTIONS)))
    return path


def supervised_torchrun(cfg: Path, overrides: list[str]) -> subprocess.Popen:
    """The node command every launcher runs: the node supervisor over torchrun, 2 ranks."""
    cmd = [sys.executable, "-m", "launchers.node", "--grace=60", "--", sys.executable, "-m",
           "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "frozen_scale.app.cli", "train", str(cfg), *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def signal_every_process(proc: subprocess.Popen, sig: int) -> list[psutil.Process]:
    """`sig` to the whole tree under `proc` (each trainer has its own process group: walk it)."""
    root = psutil.Process(proc.pid)
    tree = [root, *root.children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return tree


def wait_paused(run_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    markers = [run_dir / f"paused_rank{r}" for r in (0, 1)]
    t0 = time.time()
    while not all(m.exists() for m in markers):
        if proc.poll() is not None:
            raise AssertionError(f"job ended (exit {proc.returncode}) before pausing:\n{proc.stdout.read()[-4000:]}")
        if time.time() - t0 > timeout:
            kill_tree(proc)
            raise AssertionError("the ranks never paused")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_lm_dir, tiny_shards) -> Path:
    tmp = tmp_path_factory.mktemp("ref")
    check(torchrun(2, ["train", str(write_cfg(tmp, "ref", tiny_lm_dir, tiny_shards))], module="frozen_scale.app.cli"))
    return tmp / "ref"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_stop_signal_to_every_process_commits_and_resumes_exactly(sig, tmp_path, tiny_lm_dir, tiny_shards,
                                                                  reference_run):
    cfg = write_cfg(tmp_path, "stopped", tiny_lm_dir, tiny_shards)
    run_dir = tmp_path / "stopped"
    proc = supervised_torchrun(cfg, [f"debug.fault=pause_after@{PAUSE_AFTER}"])
    wait_paused(run_dir, proc)
    tree = signal_every_process(proc, sig)
    assert len(tree) >= 2 + 2 + 4, f"expected supervisor, torchrun, 2 trainers, 4 loader workers: {tree}"
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    assert proc.returncode == EXIT_REQUEUE, out[-4000:]
    assert "DataLoader worker" not in out, out[-4000:]
    assert committed_steps(str(run_dir / "checkpoints")) == [PAUSE_AFTER + 1], out[-4000:]
    assert out.count("preempted: checkpoint committed at step 5") == 2, out[-4000:]  # each rank's last word
    assert out.count("exitcode  : 75") == 2, out[-4000:]  # torchrun's summary: both ranks exited 75
    assert "got signal" not in out, out[-4000:]  # torchrun itself left TERM to the trainers

    check(torchrun(2, ["train", str(cfg), "train.resume=auto"], module="frozen_scale.app.cli"))
    diff = max_abs_diff(final_weights(reference_run), final_weights(run_dir))
    assert diff <= 1e-6, f"max abs diff {diff} after resuming"
    for rank in (0, 1):
        ref = (reference_run / f"sample_keys_rank{rank}.txt").read_text().split()
        got = (run_dir / f"sample_keys_rank{rank}.txt").read_text().split()
        assert got == ref, f"rank {rank}: sample order differs after resume"


def test_supervisor_exit_codes(tmp_path):
    """Without a signal the supervisor passes its child's code through; after one, a failed child
    (its trainers exited 75) becomes 75."""
    code = [sys.executable, "-m", "launchers.node", "--", sys.executable, "-c", "import sys; sys.exit(4)"]
    assert subprocess.run(code, cwd=REPO, env=child_env()).returncode == 4
    script = tmp_path / "child.py"
    script.write_text("import signal, sys, time\n"
                      "assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN\n"
                      "open(sys.argv[1], 'w').close()\n"
                      "time.sleep(3)\n"
                      "sys.exit(1)\n")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "launchers.node", "--", sys.executable, str(script), str(ready)],
                            cwd=REPO, env=child_env())
    t0 = time.time()
    while not ready.exists():
        assert proc.poll() is None and time.time() - t0 < 60
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)  # the child ignores TERM; the supervisor waits for it
    assert proc.wait(timeout=60) == EXIT_REQUEUE


FAKE_TRAINER = ("import signal, sys, time\n"
                "def stop(signum, frame):\n"
                "    open(sys.argv[1] + '.stopped', 'w').write(str(signum))\n"
                "    sys.exit(75)\n"
                "signal.signal(signal.SIGUSR1, stop)\n"
                "signal.signal(signal.SIGTERM, stop)\n"
                "open(sys.argv[1], 'w').close()\n"
                "time.sleep(120)\n")


def _start_direct(tmp_path: Path, extra: list[str] = ()) -> tuple[subprocess.Popen, Path]:
    script, ready = tmp_path / "trainer.py", tmp_path / "ready"
    script.write_text(FAKE_TRAINER)
    proc = subprocess.Popen([sys.executable, "-m", "launchers.node", "--direct", "--grace=30", *extra, "--",
                             sys.executable, str(script), str(ready)], cwd=REPO, env=child_env(),
                            start_new_session=True)
    t0 = time.time()
    while not ready.exists():
        assert proc.poll() is None and time.time() - t0 < 60
        time.sleep(0.05)
    return proc, ready


def test_a_killed_supervisor_still_stops_its_trainer(tmp_path):
    """A Ray worker that ends SIGKILLs its direct child, the supervisor: the trainer under it still
    gets its stop (the parent-death signal) and commits instead of being left running or killed."""
    proc, ready = _start_direct(tmp_path)
    trainer = psutil.Process(proc.pid).children()[0]
    proc.kill()
    proc.wait()
    trainer.wait(timeout=30)  # not our child: its code is not ours to read; the file says it stopped
    assert Path(f"{ready}.stopped").read_text() == str(int(signal.SIGUSR1))


def test_stop_local_stops_every_supervisor_and_waits(tmp_path):
    """A pod's preStop hook: `launchers.node --stop-local` sends the stop to the supervisors in the
    container and returns once they have exited, their trainers' stop done."""
    proc, ready = _start_direct(tmp_path)
    hook = subprocess.run([sys.executable, "-m", "launchers.node", "--stop-local", "--grace=60"], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert hook.returncode == 0, hook.stderr
    assert proc.poll() == EXIT_REQUEUE  # already gone when the hook returned
    assert Path(f"{ready}.stopped").exists()



def test_a_hang_up_is_a_stop(tmp_path):
    """A remote node runs under `ssh -tt`: when the launcher is interrupted, its terminal hangs up
    and the supervisor gets HUP, which stops the trainer (it commits) and ends in 75."""
    proc, ready = _start_direct(tmp_path)
    os.kill(proc.pid, signal.SIGHUP)
    assert proc.wait(timeout=60) == EXIT_REQUEUE
    assert Path(f"{ready}.stopped").read_text() == str(int(signal.SIGUSR1))
