"""One sample's original bytes: an http(s) download, or a read of a file URL from a listing.

Failures are values, not exceptions: `fetch_url` returns a `Fetched` whose `error` names the
reason (the error histogram counts these names). Only http and https are ever requested.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import (HTTPError, MaxRetryError, NewConnectionError, ProtocolError,
                                URLSchemeUnknown, TimeoutError as Urllib3Timeout)

from data_prep.options import UA_TOKEN, FetchOptions

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
CHUNK = 64 * 1024


@dataclass
class Fetched:
    data: bytes | None = None
    error: str | None = None
    """Reason for failure: unsupported_scheme, http_404, timeout, connection_error, too_many_bytes,
    empty_content, opted_out, ..."""
    attempts: int = 0
    seconds: float = 0.0


_pool_lock = threading.Lock()
_pool: urllib3.PoolManager | None = None


def _pool_manager() -> urllib3.PoolManager:
    # urllib3 directly (not requests): about half the CPU per request, which matters at
    # hundreds of images per second per core. One thread-safe pool per process.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = urllib3.PoolManager(num_pools=256, maxsize=64, block=False)
        return _pool


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


def _classify(err: Exception) -> tuple[str, bool]:
    """(reason, retryable) of a transport error."""
    if isinstance(err, MaxRetryError):
        if err.reason is None or "redirect" in str(err.reason).lower():
            return "too_many_redirects", False
        return _classify(err.reason)
    if isinstance(err, URLSchemeUnknown):
        return "unsupported_scheme", False
    if isinstance(err, NewConnectionError):
        return "connection_error", True
    if isinstance(err, Urllib3Timeout):
        return "timeout", False
    if isinstance(err, (ProtocolError, ConnectionError)):
        return "connection_error", True
    return f"request_error:{type(err).__name__}", False


def _request(url: str, opts: FetchOptions):
    """GET following at most MAX_REDIRECTS redirects, each checked to stay on http(s)."""
    no_retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=0,
                               raise_on_redirect=False)
    for _ in range(MAX_REDIRECTS + 1):
        r = _pool_manager().request("GET", url, headers={"User-Agent": opts.user_agent}, preload_content=False,
                                    timeout=urllib3.Timeout(connect=opts.timeout_s, read=opts.timeout_s),
                                    retries=no_retries, redirect=False)
        location = r.headers.get("Location")
        if r.status not in REDIRECT_STATUS or not location:
            return r, None
        r.drain_conn()
        r.release_conn()
        url = urljoin(url, location)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            return None, "unsupported_scheme"
    return None, "too_many_redirects"


def _download_once(url: str, opts: FetchOptions) -> tuple[bytes | None, str | None, bool]:
    """(data, error, retryable) of one attempt."""
    deadline = time.monotonic() + opts.timeout_s
    try:
        r, error = _request(url, opts)
    except (HTTPError, OSError, ValueError) as err:
        reason, retryable = _classify(err)
        return None, reason, retryable
    if error:
        return None, error, False
    complete = False
    try:
        if r.status != 200:
            return None, f"http_{r.status}", r.status in RETRYABLE_STATUS
        if robots_opt_out(r.headers.getlist("X-Robots-Tag"), opts.disallowed_directives):
            return None, "opted_out", False
        length = r.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > opts.max_bytes:
            return None, "too_many_bytes", False
        buf = bytearray()
        for chunk in r.stream(CHUNK):
            buf += chunk
            if len(buf) > opts.max_bytes:
                return None, "too_many_bytes", False
            if time.monotonic() > deadline:
                return None, "timeout", False
        complete = True
        if not buf:
            return None, "empty_content", False
        return bytes(buf), None, False
    except (HTTPError, OSError) as err:
        reason, retryable = _classify(err)
        return None, reason, retryable
    finally:
        if not complete:  # unread body: the connection cannot be reused
            r.close()
        r.release_conn()


def fetch_url(url: str, opts: FetchOptions) -> Fetched:
    start = time.monotonic()
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in ("http", "https"):
        return Fetched(error="unsupported_scheme", seconds=time.monotonic() - start)
    attempts = 0
    while True:
        attempts += 1
        data, error, retryable = _download_once(url, opts)
        if error is None or not retryable or attempts > opts.retries:
            return Fetched(data, error, attempts, time.monotonic() - start)
        time.sleep(opts.backoff_s * 2 ** (attempts - 1))


def fetch_file(url: str, opts: FetchOptions, storage_options: dict | None = None) -> Fetched:
    """Read a file named by a folder listing or a captions file (local path or any fsspec URL)."""
    from frozen_scale import storage

    start = time.monotonic()
    try:
        fs, path = storage.filesystem(url, storage_options)
        size = fs.size(path)
        if size is not None and size > opts.max_bytes:
            return Fetched(error="too_many_bytes", attempts=1, seconds=time.monotonic() - start)
        data = fs.cat_file(path)
    except FileNotFoundError:
        return Fetched(error="file_not_found", attempts=1, seconds=time.monotonic() - start)
    except OSError as err:
        return Fetched(error=f"read_error:{type(err).__name__}", attempts=1, seconds=time.monotonic() - start)
    if not data:
        return Fetched(error="empty_content", attempts=1, seconds=time.monotonic() - start)
    return Fetched(data, None, 1, time.monotonic() - start)
