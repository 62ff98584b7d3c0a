"""frozen_scale.storage: all-or-nothing writes (durable before they are visible), joins and listing."""

from __future__ import annotations

import os

import pytest

from frozen_scale import storage


def _record_fsyncs(monkeypatch) -> list[str]:
    """What os.fsync was called on, by path, in order."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    return seen


def test_put_file_is_durable_before_the_marker_written_after_it(tmp_path, monkeypatch):
    """A data-prep shard (the tar) reaches the disk, name and bytes, before its stats file (the
    commit marker written after it): after a power loss a stats file never stands beside an empty tar."""
    src = tmp_path / "work.tar"
    src.write_bytes(b"x" * 4096)
    out = tmp_path / "shards"
    seen = _record_fsyncs(monkeypatch)
    storage.atomic_put_file(str(src), f"file://{out}/00000.tar")
    storage.atomic_write_bytes(f"file://{out}/00000_stats.json", b"{}")
    tar_data = next(i for i, p in enumerate(seen) if ".00000.tar.tmp-" in p)
    tar_name = next(i for i, p in enumerate(seen) if p == str(out) and i > tar_data)
    stats = next(i for i, p in enumerate(seen) if "00000_stats.json.tmp-" in p)
    assert tar_data < tar_name < stats, seen
    assert (out / "00000.tar").read_bytes() == b"x" * 4096
    assert sorted(os.listdir(out)) == ["00000.tar", "00000_stats.json"]  # no temp file left


def test_atomic_write_replaces_whole(tmp_path):
    url = str(tmp_path / "a" / "b.json")
    storage.write_json(url, {"v": 1})
    storage.write_json(url, {"v": 2})
    assert storage.read_json(url) == {"v": 2}
    assert os.listdir(tmp_path / "a") == ["b.json"]


@pytest.mark.parametrize("base, parts, joined", [
    ("s3://bucket/run", ("ckpt", "step_1"), "s3://bucket/run/ckpt/step_1"),
    ("s3://bucket/run/", ("x",), "s3://bucket/run/x"),
    ("/data/run", ("x", "y"), "/data/run/x/y"),
])
def test_join(base, parts, joined):
    assert storage.join(base, *parts) == joined


def test_remote_and_local(tmp_path):
    assert storage.is_remote("s3://b/k") and not storage.is_remote(str(tmp_path))
    assert storage.base_name("s3://b/run/step_00000001") == "step_00000001"
    storage.atomic_write_bytes(str(tmp_path / "one"), b"1")
    storage.atomic_write_bytes(str(tmp_path / "two"), b"2")
    assert sorted(storage.list_names(str(tmp_path))) == ["one", "two"]
