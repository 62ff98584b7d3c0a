"""Helpers for the data_prep tests that run Ray: Ray kept on loopback, and the output check.

Ray names a node by the address this machine would use to reach the outside, and binds and
connects there; `ray_on_loopback()` makes it use 127.0.0.1 instead, in this process (Ray's
own switch for machines that are not cluster nodes) and in the processes it starts (the same
switch through the environment), so a test's Ray talks to loopback only. `LOOPBACK_ENV` is
that environment for a command started by a test (a driver), which reads it at import.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextlib.contextmanager
def ray_on_loopback():
    import ray._private.ray_constants as constants

    saved_env = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    saved = constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOOPBACK_ENV)
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check_output(out: Path, rows: int, per_shard: int) -> dict:
    """Every row exactly once over all status tables; each stats file matches its tar; no sample
    (key or image content) in two tars; every row (all distinct, all fine) kept."""
    import hashlib

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == rows
    seen_rows, keys, digests = [], [], []
    for shard in manifest["shards"]:
        stats = json.loads((out / shard["stats"]).read_text())
        status = pq.read_table(out / stats["status_table"]).to_pylist()
        with tarfile.open(out / shard["name"]) as tar:
            members = tar.getnames()
            digests += [hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in members if m.endswith(".jpg")]
        tar_keys = sorted({m.split(".", 1)[0] for m in members})
        ok_keys = sorted(r["key"] for r in status if r["status"] == "success")
        assert tar_keys == ok_keys and len(members) == 3 * len(tar_keys)
        assert stats["num_samples"] == shard["num_samples"] == len(tar_keys)
        assert stats["count"] == len(status) == sum(stats["status_counts"].values())
        assert stats["tar_bytes"] == (out / shard["name"]).stat().st_size
        seen_rows += [r["row"] for r in status]
        keys += tar_keys
    assert sorted(seen_rows) == list(range(rows)), "a row is missing or duplicated"
    assert len(keys) == len(set(keys)) == rows  # all images are fine: all kept, once
    assert len(digests) == len(set(digests)) == rows, "the same image is in two samples"
    assert len(manifest["shards"]) == -(-rows // per_shard)
    return manifest
