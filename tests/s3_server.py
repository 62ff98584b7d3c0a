"""A local S3-compatible server (moto's ThreadedMotoServer) as a pytest fixture.

    from tests.s3_server import s3_server   # or via conftest.py, which imports it

    def test_x(s3_server):
        url = s3_server.new_bucket()                 # "s3://bucket-<n>"
        fsspec.open(url + "/a", "wb", **s3_server.storage_options)

The endpoint is set the standard ways: `storage_options={"client_kwargs": {"endpoint_url": ...}}`
and the AWS_ENDPOINT_URL environment variable (honoured by botocore, so by s3fs and by child
processes started after the fixture); dummy credentials come from AWS_* environment variables.
"""

from __future__ import annotations

import itertools
import os

import pytest

DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self, endpoint_url: str):
        self.endpoint_url = endpoint_url
        self.storage_options = {"client_kwargs": {"endpoint_url": endpoint_url}}
        self._ids = itertools.count()

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
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(DUMMY_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield S3Server(endpoint)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
