"""A local S3-compatible server (moto's ThreadedMotoServer) as a pytest fixture.

    from tests.support.s3_server import s3_server   # or via conftest.py, which imports it

    def test_x(s3_server):
        url = s3_server.new_bucket()                 # "s3://bucket-<n>"
        fsspec.open(url + "/a", "wb", **s3_server.storage_options)

Requests are counted at the server, per (method, "bucket/key"), across every process that uses
it (ranks under torchrun too): `s3_server.requests()` is a Counter of them, `s3_server.bytes_sent()`
a Counter of response-body bytes written out to clients (a GET the client closes early counts only
what was written before it closed), `s3_server.reset_counts()` starts afresh.

The endpoint is set the standard ways: `storage_options={"client_kwargs": {"endpoint_url": ...}}`
and the AWS_ENDPOINT_URL environment variable (honoured by botocore, so by s3fs and by child
processes started after the fixture); dummy credentials come from AWS_* environment variables.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter
from urllib.parse import unquote

import pytest

DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class RequestCounter:
    """WSGI middleware: counts requests and response-body bytes per (method, "bucket/key")."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.bytes: Counter = Counter()

    def __call__(self, environ, start_response):
        key = (environ["REQUEST_METHOD"], unquote(environ.get("PATH_INFO", "")).lstrip("/"))
        with self.lock:
            self.requests[key] += 1
        return self._counted(self.app(environ, start_response), key)

    def _counted(self, body, key):
        try:
            for chunk in body:
                yield chunk
                with self.lock:  # counted once the server has written it out: a client that
                    self.bytes[key] += len(chunk)  # closes a GET early (s3fs does, before a ranged
                    # download in parts) does not receive the rest
        finally:
            if hasattr(body, "close"):
                body.close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes.clear()


class S3Server:
    def __init__(self, endpoint_url: str, counter: RequestCounter | None = None):
        self.endpoint_url = endpoint_url
        self.storage_options = {"client_kwargs": {"endpoint_url": endpoint_url}}
        self._ids = itertools.count()
        self._counter = counter

    def requests(self) -> Counter:
        """(method, "bucket/key") -> number of requests since the last reset."""
        with self._counter.lock:
            return Counter(self._counter.requests)

    def bytes_sent(self) -> Counter:
        """(method, "bucket/key") -> response-body bytes since the last reset."""
        with self._counter.lock:
            return Counter(self._counter.bytes)

    def reset_counts(self) -> None:
        self._counter.reset()

    def new_bucket(self, name: str | None = None) -> str:
        import fsspec

        name = name or f"bucket-{os.getpid()}-{next(self._ids)}"
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **self.storage_options)
        fs.mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in [*DUMMY_ENV, "AWS_ENDPOINT_URL"]}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    # werkzeug's server hands each request to its `app`: put the counter in front of moto's
    counter = RequestCounter(server._server.app)
    server._server.app = counter
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(DUMMY_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield S3Server(endpoint, counter)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
