"""The per-node supervisor: runs torchrun so that a stop signal ends in a committed checkpoint.

    python -m launchers.node [--grace SECONDS] -- python -m torch.distributed.run ... -m TRAIN_MODULE ...

A scheduler stops a job by signalling it: Slurm sends TERM (scancel, preemption, a time limit
without --signal) or USR1 (--signal) to *every* process of the step; Kubernetes sends TERM to a
container's first process only; Ray ends a worker's process. The trainers are what must act
(finish the step, commit a checkpoint, exit 75), and every process between them and the signal
must survive it until they have:

- torchrun starts with TERM and USR1 ignored and is told not to handle TERM itself (its
  --signals-to-handle, through the environment): its own handler would SIGKILL its workers 30 s
  after the signal, whatever their save needs. INT (Ctrl-C), HUP and QUIT keep torchrun's handling;
- this supervisor forwards a TERM or USR1 it receives to torchrun's children (the trainers) as
  USR1, so a signal that reaches only the first process (a pod eviction, `ray job stop`) still
  reaches them; a trainer that got both handles one;
- loader workers ignore the stop signals (frozen_scale.data.loader.ignore_stop_signals).

Exit code: torchrun's, except that after a stop signal a failed torchrun (its trainers exited 75)
becomes 75, what the launchers requeue on. `--grace`: after this many seconds without the trainers
having exited, it says so once in the log (the save is slower than the scheduler's grace).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from frozen_scale.constants import EXIT_REQUEUE

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
TORCHRUN_HANDLES = "SIGINT,SIGHUP,SIGQUIT"
"""The signals torchrun still handles itself (TORCHELASTIC_SIGNALS_TO_HANDLE): not TERM."""
REFORWARD_S = 10.0
"""While the trainers have not exited after a stop, USR1 is forwarded again this often: a trainer
still importing ignores signals until its handler is installed."""


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
    def __init__(self, argv: list[str], grace: float):
        self.argv, self.grace = argv, grace
        self.stopped_at: float | None = None
        self.child: subprocess.Popen | None = None

    def _forward(self, signum, _frame) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        print(f"node supervisor: signal {signum}: forwarding to the trainers", file=sys.stderr, flush=True)
        for pid in children(self.child.pid) if self.child else []:
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
        self.child = subprocess.Popen(self.argv, env=env)
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
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- torchrun and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    return Supervisor(command, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
