"""A deadline no slow sender can stretch: a watchdog shuts a download's socket down when it passes.

Socket timeouts bound each read, not their sum: a server sending a byte just before every timeout
(while connecting over TLS, in the headers or in the body) would hold a download thread for as
long as it likes. Here a download registers its deadline and attaches the socket it is using; one
daemon thread per process shuts that socket down at the deadline, which ends any blocked read at
once (the reader then sees `expired`).

    deadline = Deadline.start(10.0)
    try:
        sock = ...; deadline.attach(sock)      # the socket now in use (replaces the previous one)
        ...reads, each with sock.settimeout(deadline.left())...
        deadline.detach()                      # always before closing or pooling the socket
    finally:
        deadline.finish()
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time


class Deadline:
    def __init__(self, at: float):
        self.at = at
        self.expired = False
        self._sock: socket.socket | None = None
        self._done = False
        self._lock = threading.Lock()

    @classmethod
    def start(cls, seconds: float) -> "Deadline":
        deadline = cls(time.monotonic() + seconds)
        _watchdog().add(deadline)
        return deadline

    def left(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self.at

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def detach(self) -> None:
        """After this returns the watchdog no longer touches the socket: it may be closed or reused."""
        with self._lock:
            self._sock = None

    def finish(self) -> None:
        with self._lock:
            self._sock, self._done = None, True

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown: on a TLS socket it must not touch the TLS state
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    def __init__(self):
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        threading.Thread(target=self._run, name="prep-deadline", daemon=True).start()

    def add(self, deadline: Deadline) -> None:
        with self._cv:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._heap[0][2] is deadline:  # earlier than what the thread sleeps towards
                self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cv.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, deadline = heapq.heappop(self._heap)
            deadline._fire()


_lock = threading.Lock()
_instance: _Watchdog | None = None
_pid = 0


def _watchdog() -> _Watchdog:
    global _instance, _pid
    with _lock:
        if _instance is None or _pid != os.getpid():  # a forked child has no watchdog thread
            _instance, _pid = _Watchdog(), os.getpid()
        return _instance
