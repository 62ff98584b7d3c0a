"""One live job per checkpoint folder: a lease object renewed while the job lives.

Rank 0 writes `{checkpoint_dir}/LEASE.json` (owner: job id, host, pid; an expiry time) before the
run resolves where it starts, and renews it from a background thread every third of
`checkpoint.lease_seconds`. A second job on the same folder finds a live lease and stops in one
line; a lease whose expiry has passed (its job was killed -9, or its node lost) is taken over, and
so is one whose holder process on this same host is gone (killed -9 and restarted at once).
A requeued attempt of the same Slurm job (the same SLURM_JOB_ID), or the same process starting
another run, takes its own lease at once.
The same object works on a shared filesystem and on object storage (written whole, then read back
to confirm that this job won a race with another one starting at the same moment).
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
import uuid

from frozen_scale import storage
from frozen_scale.config import InputError

LEASE_FILE = "LEASE.json"


def _start_time(pid: int) -> str:
    """The kernel's start time of `pid` (so a reused pid is not taken for the holder), or ''."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _holder_gone(held: dict) -> bool:
    """True when the lease was taken on this host by a process that no longer runs."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int) \
            or held["pid"] <= 0:
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    started = held.get("started", "")
    return bool(started) and _start_time(held["pid"]) not in ("", started)


def _job_id() -> str:
    """The scheduler's id of this job: a requeued attempt of it may take its own lease at once."""
    return os.environ.get("SLURM_JOB_ID", "")


class Lease:
    def __init__(self, checkpoint_dir: str, seconds: float):
        self.url = storage.join(checkpoint_dir, LEASE_FILE)
        self.seconds = seconds
        self.token = uuid.uuid4().hex
        self.owner = {"token": self.token, "job": _job_id(), "host": socket.gethostname(), "pid": os.getpid(),
                      "started": _start_time(os.getpid())}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        storage.write_json(self.url, {**self.owner, "expires_at": time.time() + self.seconds,
                                      "lease_seconds": self.seconds})

    def _read(self) -> dict | None:
        try:
            return storage.read_json(self.url)
        except (FileNotFoundError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lease, or raise InputError naming the live job that holds it."""
        held = self._read()
        mine = held and ((held.get("job") and held.get("job") == self.owner["job"])
                         or (held.get("host"), held.get("pid")) == (self.owner["host"], self.owner["pid"]))
        if held and held.get("expires_at", 0) > time.time() and not mine and not _holder_gone(held):
            left = held["expires_at"] - time.time()
            raise InputError(
                f"another job is training into {self.url.rsplit('/', 1)[0]} (job {held.get('job') or '?'} on "
                f"{held.get('host')}, pid {held.get('pid')}); its lease expires in {left:.0f} s unless it is "
                "renewed. Stop it, or use another train.run_dir / checkpoint.dir")
        self._write()
        time.sleep(min(0.5, self.seconds / 10))  # a job that wrote at the same moment: the last write wins
        if (self._read() or {}).get("token") != self.token:
            raise InputError(f"another job took the lease {self.url} at the same moment; use another run folder")
        self._thread = threading.Thread(target=self._renew, name="checkpoint-lease", daemon=True)
        self._thread.start()
        atexit.register(self.release)  # any way out of the interpreter but a kill

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self._write()
            except OSError:  # a storage hiccup: the next renewal tries again before expiry
                pass

    def release(self) -> None:
        """Stop renewing and remove the lease (if it is still this job's)."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=5)
        self._thread = None
        if (self._read() or {}).get("token") == self.token:
            fs, path = storage.filesystem(self.url)
            fs.rm(path)
