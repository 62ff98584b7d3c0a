"""One sample's original bytes: an http(s) download, or a read of a file URL from a listing.

Failures are values, not exceptions: `fetch_url` returns a `Fetched` whose `error` names the
reason (the error histogram counts these names). Only http and https are ever requested.

A download has one deadline, `timeout_s`, for everything: connecting, TLS, headers, body,
redirects and retries. Each socket read waits at most the time left, and a watchdog
(data_prep.deadline) shuts the socket down at the deadline, so a server that sends a few bytes
at a time cannot stretch it. Every connection, redirects included, goes to an address the
private-network guard (data_prep.netguard) has checked; refused ones count as `private_address`.
Connections are kept alive and reused per origin (http.client over our own sockets: the socket
must be one we opened to a checked address, and the one the watchdog can shut).
"""

from __future__ import annotations

import collections
import functools
import http.client
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from data_prep.deadline import Deadline
from data_prep.netguard import DEFAULT_PORTS, AddressPolicy, AddressRefused, normalize_host
from data_prep.options import UA_TOKEN, FetchOptions

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
IDLE_PER_ORIGIN = 32
IDLE_ORIGINS = 256
URL_SAFE = "!#$%&'()*+,/:;=?@[]~"  # kept as they are in a request target; the rest is %-encoded
LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass
class Fetched:
    data: bytes | None = None
    error: str | None = None
    """Reason for failure: unsupported_scheme, invalid_url, http_404, timeout, connection_error,
    dns_error, tls_error, bad_response, private_address, too_many_bytes, empty_content, opted_out, ..."""
    attempts: int = 0
    seconds: float = 0.0


class _Failure(Exception):
    def __init__(self, reason: str, retryable: bool = False):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


def robots_opt_out(header_values: list[str], disallowed: tuple[str, ...], ua_token: str = UA_TOKEN) -> bool:
    """True if an X-Robots-Tag forbids use: a generic directive ('noai') or one addressed to us
    ('frozen_scale: noai'); directives addressed to another agent ('otherbot: noai') don't apply."""
    bad = {d.lower() for d in disallowed}
    for value in header_values:
        agent = None
        text = value.strip()
        head, sep, rest = text.partition(":")
        # "agent: d1, d2" names an agent when the part before ':' is a single bare token.
        if sep and head.strip() and " " not in head.strip() and "," not in head:
            agent, text = head.strip().lower(), rest
        if agent is not None and agent != ua_token.lower():
            continue
        directives = {d.strip().lower() for d in text.split(",")}
        if directives & bad:
            return True
    return False


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # normalized, IDNA-encoded
    port: int
    path: str  # the request target: path and query, %-encoded

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == DEFAULT_PORTS[self.scheme] else f"{name}:{self.port}"


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _Failure("unsupported_scheme")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
        host = normalize_host(parts.hostname or "")
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except (ValueError, UnicodeError):
        raise _Failure("invalid_url") from None
    if not host or any(c in host for c in " /\\\0\r\n"):
        raise _Failure("invalid_url")
    path = _quote(parts.path or "/") + (f"?{_quote(parts.query)}" if parts.query else "")
    return _Target(scheme, host, port, path)


def _quote(text: str) -> str:
    """%-encode what may not appear in a request target (spaces, non-ASCII, ...), keeping
    existing %XX escapes; a '%' that starts none is encoded itself."""
    return LONE_PERCENT.sub("%25", quote(text, safe=URL_SAFE))


class _Connection(http.client.HTTPConnection):
    """HTTP/1.1 over a socket we opened to a checked address; never reconnects by itself."""

    def __init__(self, sock: socket.socket, target: _Target, peer: tuple):
        super().__init__(target.host, target.port)
        self.sock = self.socket = sock  # `socket` stays set after http.client drops `sock`
        self.peer = peer

    def connect(self):
        raise ConnectionError("connection closed")


class _IdleConnections:
    """Kept-alive connections per origin (scheme, host, port), the least recently used origin
    evicted first."""

    def __init__(self):
        self._idle: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, origin) -> _Connection | None:
        with self._lock:
            conns = self._idle.get(origin)
            return conns.pop() if conns else None

    def give(self, origin, conn: _Connection) -> None:
        with self._lock:
            conns = self._idle.setdefault(origin, [])
            self._idle.move_to_end(origin)
            if len(conns) < IDLE_PER_ORIGIN:
                conns.append(conn)
                conn = None
            evicted = []
            while len(self._idle) > IDLE_ORIGINS:
                evicted += self._idle.popitem(last=False)[1]
        for c in evicted + ([conn] if conn else []):
            c.close()


_idle = _IdleConnections()


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # certificate and host name checked


@functools.lru_cache(maxsize=64)
def _policy(allow_hosts: tuple[str, ...], allow_private_network: bool) -> AddressPolicy:
    return AddressPolicy(allow_hosts, allow_private_network)


_RESOLVERS = None


def _resolve(policy: AddressPolicy, target: _Target, deadline: Deadline) -> list[tuple[int, tuple]]:
    """The host's checked addresses, within the download's deadline: name resolution blocks in
    the C library with timeouts of its own, so it runs on a small shared pool and is abandoned
    (TimeoutError) when the deadline passes first."""
    global _RESOLVERS
    if _RESOLVERS is None:
        from concurrent.futures import ThreadPoolExecutor

        _RESOLVERS = ThreadPoolExecutor(8, thread_name_prefix="resolve")
    future = _RESOLVERS.submit(policy.addresses, target.host, target.port)
    try:
        return future.result(timeout=max(deadline.left(), 1e-3))
    except TimeoutError:
        future.cancel()
        raise TimeoutError(f"resolving {target.host} took longer than the download's deadline") from None


def _open(target: _Target, policy: AddressPolicy, deadline: Deadline) -> _Connection:
    """A new connection to a checked address of the target's host (tried in resolver order)."""
    last: OSError = TimeoutError("no time left to connect")
    for family, sockaddr in _resolve(policy, target, deadline):
        if deadline.passed():
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        deadline.attach(sock)
        try:
            sock.settimeout(max(deadline.left(), 1e-3))
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.scheme == "https":
                plain = sock
                sock = _tls_context().wrap_socket(plain, server_hostname=target.host, do_handshake_on_connect=False)
                deadline.attach(sock)
                sock.settimeout(max(deadline.left(), 1e-3))
                sock.do_handshake()
        except OSError as err:
            deadline.detach()
            sock.close()
            last = err
            continue
        return _Connection(sock, target, sockaddr)
    raise last


def _send(target: _Target, opts: FetchOptions, policy: AddressPolicy, deadline: Deadline):
    """(connection, response to GET target): a kept-alive connection when there is one (its
    address checked again under this policy), a new one otherwise or when the kept one turns
    out to be closed by the server."""
    conn = _idle.take(target.origin)
    if conn is not None and not policy.permits(target.host, target.port, conn.peer):
        conn.close()
        conn = None
    headers = {"Host": target.host_header, "User-Agent": opts.user_agent}
    while True:
        reused = conn is not None
        if conn is None:
            conn = _open(target, policy, deadline)
        deadline.attach(conn.socket)
        try:
            conn.socket.settimeout(max(deadline.left(), 1e-3))
            conn.request("GET", target.path, headers=headers)
            return conn, conn.getresponse()
        except BaseException as err:
            deadline.detach()
            conn.close()
            if not isinstance(err, ConnectionError) or not reused or deadline.passed():
                raise
            conn = None  # a kept-alive connection the server had closed: once more, on a new one


def _read_body(conn: _Connection, resp: http.client.HTTPResponse, opts: FetchOptions, deadline: Deadline) -> bytes:
    if resp.status != 200:
        raise _Failure(f"http_{resp.status}", resp.status in RETRYABLE_STATUS)
    if robots_opt_out(resp.headers.get_all("X-Robots-Tag") or [], opts.disallowed_directives):
        raise _Failure("opted_out")
    length = resp.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > opts.max_bytes:
        raise _Failure("too_many_bytes")
    pieces, size = [], 0  # joined once at the end: no regrowing buffer
    while True:
        left = deadline.left()
        if left <= 0:
            raise _Failure("timeout")
        conn.socket.settimeout(left)
        piece = resp.read1(CHUNK)  # whatever has arrived, up to CHUNK: never waits for a full chunk
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
        if size > opts.max_bytes:
            raise _Failure("too_many_bytes")
    if deadline.expired:  # the watchdog shut the socket: what looked like the end was not
        raise _Failure("timeout")
    if resp.length:  # the server hung up before Content-Length bytes
        raise _Failure("connection_error", True)
    if not size:
        raise _Failure("empty_content")
    return b"".join(pieces)


def _follow(url: str, opts: FetchOptions, policy: AddressPolicy, deadline: Deadline) -> bytes:
    """GET following at most MAX_REDIRECTS redirects, each to http(s) and each hop's address checked."""
    for _ in range(MAX_REDIRECTS + 1):
        target = _target(url)
        conn, resp = _send(target, opts, policy, deadline)
        reusable = False
        try:
            location = resp.getheader("Location")
            if resp.status in REDIRECT_STATUS and location:
                url = urljoin(url, location.strip())
                continue
            data = _read_body(conn, resp, opts, deadline)
            reusable = not resp.will_close
            return data
        finally:
            deadline.detach()
            resp.close()
            if reusable:
                _idle.give(target.origin, conn)
            else:
                conn.close()
    raise _Failure("too_many_redirects")


def _classify(err: Exception) -> tuple[str, bool]:
    """(reason, retryable) of a transport error."""
    if isinstance(err, _Failure):
        return err.reason, err.retryable
    if isinstance(err, AddressRefused):
        return "private_address", False
    if isinstance(err, socket.gaierror):
        return "dns_error", err.errno == socket.EAI_AGAIN
    if isinstance(err, TimeoutError):
        return "timeout", False
    if isinstance(err, ssl.SSLError) or isinstance(err, ssl.CertificateError):
        return "tls_error", False
    if isinstance(err, (ConnectionError, http.client.IncompleteRead)):
        return "connection_error", True
    if isinstance(err, http.client.HTTPException):
        return "bad_response", False
    if isinstance(err, OSError):
        return "connection_error", True
    return f"request_error:{type(err).__name__}", False


def _download_once(url: str, opts: FetchOptions, policy: AddressPolicy, deadline: Deadline
                   ) -> tuple[bytes | None, str | None, bool]:
    """(data, error, retryable) of one attempt."""
    try:
        return _follow(url, opts, policy, deadline), None, False
    except (_Failure, AddressRefused, OSError, http.client.HTTPException, ValueError) as err:
        reason, retryable = _classify(err)
        if reason in ("connection_error", "tls_error", "bad_response") and deadline.passed():
            return None, "timeout", False  # the watchdog ended it
        return None, reason, retryable


def fetch_url(url: str, opts: FetchOptions) -> Fetched:
    start = time.monotonic()
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in ("http", "https"):
        return Fetched(error="unsupported_scheme", seconds=time.monotonic() - start)
    policy = _policy(tuple(opts.allow_hosts), opts.allow_private_network)
    deadline = Deadline.start(opts.timeout_s)
    attempts = 0
    try:
        while True:
            attempts += 1
            data, error, retryable = _download_once(url, opts, policy, deadline)
            pause = opts.backoff_s * 2 ** (attempts - 1)
            if error is None or not retryable or attempts > opts.retries or pause >= deadline.left():
                return Fetched(data, error, attempts, time.monotonic() - start)
            time.sleep(pause)
    finally:
        deadline.finish()


def fetch_file(url: str, opts: FetchOptions, storage_options: dict | None = None) -> Fetched:
    """Read a file named by a folder listing or a captions file (local path or any fsspec URL)."""
    from frozen_scale import storage

    start = time.monotonic()
    try:
        fs, path = storage.filesystem(url, storage_options)
        if storage.is_local(fs):
            import stat

            if not stat.S_ISREG(os.stat(path).st_mode):  # /dev/zero, a FIFO, /proc: no size to trust
                return Fetched(error="not_a_regular_file", attempts=1, seconds=time.monotonic() - start)
        size = fs.size(path)
        if size is not None and size > opts.max_bytes:
            return Fetched(error="too_many_bytes", attempts=1, seconds=time.monotonic() - start)
        with fs.open(path, "rb") as fh:
            data = fh.read(opts.max_bytes + 1)  # bounded whatever the size said
        if len(data) > opts.max_bytes:
            return Fetched(error="too_many_bytes", attempts=1, seconds=time.monotonic() - start)
    except FileNotFoundError:
        return Fetched(error="file_not_found", attempts=1, seconds=time.monotonic() - start)
    except OSError as err:
        return Fetched(error=f"read_error:{type(err).__name__}", attempts=1, seconds=time.monotonic() - start)
    if not data:
        return Fetched(error="empty_content", attempts=1, seconds=time.monotonic() - start)
    return Fetched(data, None, 1, time.monotonic() - start)
