"""The per-node supervisor: runs torchrun so that a stop signal ends in a committed checkpoint.

    python -m launchers.node [--grace SECONDS] -- python -m torch.distributed.run ... -m TRAIN_MODULE ...
    python -m launchers.node --direct [--grace SECONDS] -- python -m TRAIN_MODULE ...   (one trainer, Ray)
    python -m launchers.node --stop-local [--grace SECONDS]                             (a pod's preStop)

A scheduler stops a job by signalling it: Slurm sends TERM (scancel, preemption, a time limit
without --signal) or USR1 (--signal) to *every* process of the step; Kubernetes sends TERM to a
container's first process only; Ray ends a worker's process. The trainers are what must act
(finish the step, commit a checkpoint, exit 75), and every process between them and the signal
must survive it until they have:

- torchrun starts with TERM and USR1 ignored and is told not to handle TERM itself (its
  --signals-to-handle, through the environment): its own handler would SIGKILL its workers 30 s
  after the signal, whatever their save needs. INT (Ctrl-C) and QUIT keep torchrun's handling; HUP
  (a remote node's ssh connection gone) is a stop like TERM;
- this supervisor forwards a TERM or USR1 it receives to torchrun's children (the trainers) as
  USR1, so a signal that reaches only the first process (a pod eviction, `ray job stop`) still
  reaches them; a trainer that got both handles one;
- loader workers ignore the stop signals (frozen_scale.data.loader.ignore_stop_signals);
- its child gets USR1 when the supervisor itself dies (Linux's parent-death signal): a Ray worker
  that ends kills its direct children with SIGKILL, which reaches this supervisor, and the trainer
  under it (`--direct`, started by launchers.ray_driver in a session of its own, out of reach of
  the worker's process-group cleanup) still gets its stop, commits and exits 75;
- `--stop-local` is a pod's preStop hook: it sends TERM to every supervisor in the container and
  waits for them (at most `--grace`), so the trainers have committed before the container's first
  process (`ray start --block`) is signalled and the container is torn down.

Exit code: torchrun's, except that after a stop signal a failed torchrun (its trainers exited 75)
becomes 75, what the launchers requeue on. `--grace`: after this many seconds without the trainers
having exited, it says so once in the log (the save is slower than the scheduler's grace).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

from frozen_scale.constants import EXIT_REQUEUE

NODE_MODULE_NAME = "launchers.node"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
"""HUP too: the host-list launcher runs remote nodes under `ssh -tt`, so a launcher that is
interrupted (its ssh connection gone) hangs up the remote terminal, and that is a stop."""
TORCHRUN_HANDLES = "SIGINT,SIGQUIT"
"""The signals torchrun still handles itself (TORCHELASTIC_SIGNALS_TO_HANDLE): not TERM or HUP."""
REFORWARD_S = 10.0
"""While the trainers have not exited after a stop, USR1 is forwarded again this often: a trainer
still importing ignores signals until its handler is installed."""


PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """This process gets `sig` when its parent dies (Linux; elsewhere nothing happens)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _cmdline(pid: int | str) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def supervisors() -> list[int]:
    """Every node supervisor on this host (or in this container) but this process."""
    me = str(os.getpid())
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and e != me
            and _is_supervisor(_cmdline(e))]


def _is_supervisor(argv: list[str]) -> bool:
    head = argv[:argv.index("--")] if "--" in argv else argv
    return "-m" in head and NODE_MODULE_NAME in head and "--stop-local" not in head


def stop_local(grace: float, poll: float = 0.5) -> int:
    """TERM to every supervisor here, then wait until they have exited (at most `grace` seconds;
    0: no bound). 0 when none is left, 1 when some still run at the bound."""
    pids = supervisors()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    print(f"node supervisor: stop sent to {len(pids)} supervisor(s): {pids}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + grace if grace else None
    while True:
        left = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _cmdline(pid)]
        if not left:
            return 0
        if deadline is not None and time.monotonic() > deadline:
            print(f"node supervisor: {left} still running {grace:.0f} s after the stop", file=sys.stderr, flush=True)
            return 1
        time.sleep(poll)


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (no third-party process library on the nodes)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) "
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


class Supervisor:
    def __init__(self, argv: list[str], grace: float, direct: bool = False):
        self.argv, self.grace, self.direct = argv, grace, direct
        self.stopped_at: float | None = None
        self.child: subprocess.Popen | None = None

    def _forward(self, signum, _frame) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        print(f"node supervisor: signal {signum}: forwarding to the trainers", file=sys.stderr, flush=True)
        targets = [] if self.child is None else [self.child.pid] if self.direct else children(self.child.pid)
        for pid in targets:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        for sig in STOP_SIGNALS:  # inherited by torchrun (and its trainers until they install theirs)
            signal.signal(sig, signal.SIG_IGN)
        # torchrun reads its --signals-to-handle from PET_SIGNALS_TO_HANDLE; older releases read
        # TORCHELASTIC_SIGNALS_TO_HANDLE directly. Its shutdown timeout covers Ctrl-C's path too.
        env = {**os.environ, "PET_SIGNALS_TO_HANDLE": TORCHRUN_HANDLES, "TORCHELASTIC_SIGNALS_TO_HANDLE": TORCHRUN_HANDLES}
        if self.grace:
            env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(int(self.grace)))
        self.child = subprocess.Popen(self.argv, env=env,
                                      preexec_fn=lambda: set_parent_death_signal(signal.SIGUSR1))
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._forward)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches torchrun too; it decides
        warned, forwarded = False, 0.0
        while True:
            try:
                rc = self.child.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stopped_at is not None and time.monotonic() - max(forwarded, self.stopped_at) > REFORWARD_S:
                forwarded = time.monotonic()  # a trainer still starting up ignored the first one
                self._forward(signal.SIGUSR1, None)
            if self.stopped_at is not None and not warned and self.grace \
                    and time.monotonic() - self.stopped_at > self.grace:
                warned = True
                print(f"node supervisor: the trainers are still saving {self.grace:.0f} s after the stop signal; "
                      "the scheduler's grace (launcher.signal_seconds) may be too short", file=sys.stderr, flush=True)
        if self.stopped_at is not None:
            took = time.monotonic() - self.stopped_at
            print(f"node supervisor: torchrun exited {rc} {took:.1f} s after the stop signal", file=sys.stderr,
                  flush=True)
            if rc != 0:
                return EXIT_REQUEUE
        return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launchers.node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grace", type=float, default=0.0, help="seconds a stop may take before it is reported")
    parser.add_argument("--direct", action="store_true", help="the command is the trainer itself (no torchrun)")
    parser.add_argument("--stop-local", action="store_true",
                        help="stop every supervisor here and wait for them (a pod's preStop hook)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- torchrun and its arguments")
    args = parser.parse_args(argv)
    if args.stop_local:
        return stop_local(args.grace)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    return Supervisor(command, args.grace, args.direct).run()


if __name__ == "__main__":
    sys.exit(main())
