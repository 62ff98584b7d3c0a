"""One work unit -> one committed shard.

    NNNNN.tar          webdataset samples {key}.{jpg|webp|png}, {key}.txt, {key}.json, in row order
    NNNNN.parquet      one status row per input row (img2dataset column names), failures included
    NNNNN_stats.json   counts by status, error histogram, bytes, durations: the commit marker

The tar is built in a local temporary file and uploaded whole; the status table goes next and
the stats file last, so a shard whose stats exist is complete. Downloads and decodes of one unit
run on a thread pool; results are consumed in row order, and encoded images wait in a local
spill file until the job-wide dedup has settled which of them this shard keeps (the earliest
row holding an image keeps it: data_prep.dedup), so a shard's bytes do not depend on timing
(tar members also carry fixed metadata). Progress (rows done, samples kept so far) is reported
through `on_progress` about once a second.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from data_prep.dedup import LocalRegistry  # noqa: F401  (re-exported: the one-process registry)
from data_prep.fetch import fetch_file, fetch_url
from data_prep.generated import KIND as GENERATED
from data_prep.imaging import ImageRejected, encode, process_image
from data_prep.options import JobOptions
from frozen_scale import storage

STATUSES = ("success", "failed_to_download", "failed_to_resize", "filtered", "opted_out", "duplicate")
DOWNLOAD_ERRORS_AS_STATUS = {"opted_out": "opted_out"}
DRIVER_ERRORS = {"duplicate_url": "duplicate", "caption_not_utf8": "filtered", "caption_too_long": "filtered",
                 "path_outside_root": "failed_to_download",
                 "bad_row": "failed_to_download", "missing_url": "failed_to_download"}
PROGRESS_EVERY_S = 1.0
STATUS_SCHEMA = pa.schema([
    ("key", pa.string()), ("row", pa.int64()), ("url", pa.string()), ("caption", pa.string()),
    ("status", pa.string()), ("error_message", pa.string()), ("width", pa.int64()),
    ("height", pa.int64()), ("original_width", pa.int64()), ("original_height", pa.int64()),
    ("sha256", pa.string()), ("bytes", pa.int64()), ("extra", pa.string())])


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


@dataclass
class Result:
    row: dict
    key: str
    status: str = "success"
    error: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    download_s: float = 0.0
    process_s: float = 0.0


def _caption_problem(caption: str | None, opts: JobOptions) -> str | None:
    if caption is None or not caption.strip():
        return None if opts.image.allow_empty_caption else "empty_caption"
    if opts.image.max_caption_chars and len(caption) > opts.image.max_caption_chars:
        return "caption_too_long"
    return None


def _generated_sample(row: dict, opts: JobOptions) -> Result:
    key, img, caption, meta = row["make"](row, opts.image.image_size)
    res = Result(row, key, meta=dict(meta))
    res.files = {opts.image.encode_format: encode(img, opts.image.encode_format, opts.image.encode_quality),
                 "txt": caption.encode()}
    res.meta["width"], res.meta["height"] = img.size
    return res


def _read_sidecar(row: dict, opts: JobOptions, storage_options) -> None:
    got = fetch_file(row["caption_url"], opts.fetch, storage_options)
    if got.data is not None:
        from data_prep.sources import _decode_caption

        row["caption"], err = _decode_caption(got.data.decode("utf-8", errors="surrogateescape").strip())
        if err:
            row["error"] = err


def handle_row(row: dict, opts: JobOptions, storage_options=None) -> Result:
    """Fetch, check and encode one row; never raises for bad input."""
    if row["kind"] == GENERATED:
        return _generated_sample(row, opts)
    res = Result(row, row["key"])
    if row.get("error"):
        res.status, res.error = DRIVER_ERRORS.get(row["error"], "failed_to_download"), row["error"]
        return res
    if row["kind"] == "file" and row.get("caption_url"):
        _read_sidecar(row, opts, storage_options)
        if row.get("error"):
            res.status, res.error = DRIVER_ERRORS[row["error"]], row["error"]
            return res
    problem = _caption_problem(row.get("caption"), opts)
    if problem:
        res.status, res.error = "filtered", problem
        return res
    if row["kind"] == "url":
        got = fetch_url(row["url"], opts.fetch)
    else:
        got = fetch_file(row["url"], opts.fetch, storage_options)
    res.download_s = got.seconds
    if got.error:
        res.status, res.error = DOWNLOAD_ERRORS_AS_STATUS.get(got.error, "failed_to_download"), got.error
        return res
    start = time.monotonic()
    try:
        image = process_image(got.data, opts.image)
    except ImageRejected as rej:
        res.status, res.error = rej.status, rej.reason
        return res
    except Exception as err:  # a codec bug on hostile bytes must cost one sample, not the shard
        res.status, res.error = "failed_to_resize", f"decode_error:{type(err).__name__}"
        return res
    finally:
        res.process_s = time.monotonic() - start
    res.meta = {"sha256": hashlib.sha256(got.data).hexdigest(), "width": image.width, "height": image.height,
                "original_width": image.original_width, "original_height": image.original_height,
                "bytes": len(got.data)}
    res.files = {opts.image.encode_format: image.data, "txt": row["caption"].encode("utf-8")}
    return res


def _sample_json(res: Result) -> dict:
    if res.row["kind"] == GENERATED:
        return {k: v for k, v in res.meta.items() if k not in ("width", "height")}
    row = res.row
    out = {"key": res.key, "row": row["row"], "url": row["url"], "caption": row.get("caption"),
           "status": res.status, **res.meta}
    for k, v in row.get("extra", {}).items():
        out.setdefault(k, v)
    return out


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _status_record(res: Result) -> dict:
    row = res.row
    return {"key": res.key, "row": row["row"], "url": row.get("url"), "caption": row.get("caption"),
            "status": res.status, "error_message": res.error,
            "width": res.meta.get("width"), "height": res.meta.get("height"),
            "original_width": res.meta.get("original_width"), "original_height": res.meta.get("original_height"),
            "sha256": res.meta.get("sha256"), "bytes": res.meta.get("bytes"),
            "extra": json.dumps(row.get("extra") or {}, sort_keys=True)}


def _status_table(records: list[dict]) -> pa.Table:
    # Through Arrow's C++ JSON reader: pa.Table.from_pylist would import pandas in every
    # worker process (most of a second of CPU each).
    if not records:
        return STATUS_SCHEMA.empty_table()
    ndjson = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
    options = pa_json.ParseOptions(explicit_schema=STATUS_SCHEMA, unexpected_field_behavior="error")
    read = pa_json.ReadOptions(block_size=len(ndjson) + 1)  # one block: no line straddles two
    table = pa_json.read_json(io.BytesIO(ndjson), read_options=read, parse_options=options)
    return table.select(STATUS_SCHEMA.names)


def _ordered_results(rows: list[dict], opts: JobOptions, storage_options, threads: int):
    """Results in row order, computed `threads` at a time with a bounded look-ahead."""
    if threads <= 1:
        for row in rows:
            yield handle_row(row, opts, storage_options)
        return
    window = collections.deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="prep") as pool:
        for row in rows:
            window.append(pool.submit(handle_row, row, opts, storage_options))
            if len(window) >= 4 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


class _Spill:
    """Encoded sample files parked in a local file until the shard knows which samples it keeps."""

    def __init__(self, path: str):
        self.file = open(path, "w+b")

    def park(self, res: Result) -> None:
        refs = {}
        for ext, data in res.files.items():
            refs[ext] = (self.file.tell(), len(data))
            self.file.write(data)
        res.files = refs

    def files(self, res: Result) -> dict[str, bytes]:
        out = {}
        for ext, (offset, size) in res.files.items():
            self.file.seek(offset)
            out[ext] = self.file.read(size)
        return out

    def close(self) -> None:
        self.file.close()


def _mark_duplicates(shard: int, results: list[Result], registry) -> None:
    """Successful samples whose image an earlier row holds become duplicates (data_prep.dedup)."""
    candidates = [r for r in results if r.status == "success" and "sha256" in r.meta]
    # settled even with no candidates: later shards wait for this one
    owners = registry.settle(shard, [(r.meta["sha256"], r.row["row"]) for r in candidates])
    for res, owner in zip(candidates, owners):
        if owner != res.row["row"]:
            res.status, res.error, res.files = "duplicate", "duplicate_image", {}


class _ActorSettle:
    """Blocking settle over the dedup actor (data_prep.dedup.HashRegistry)."""

    def __init__(self, actor):
        self.actor = actor

    def settle(self, shard: int, items: list[tuple[str, int]]) -> list[int]:
        import ray

        return ray.get(self.actor.settle.remote(shard, items))


def _settler(registry):
    if registry is not None and hasattr(getattr(registry, "settle", None), "remote"):
        return _ActorSettle(registry)
    return registry


class _Ticker:
    """Calls report(rows done, successes so far (before dedup)) at most every PROGRESS_EVERY_S."""

    def __init__(self, report):
        self.report, self.last = report, time.monotonic()

    def __call__(self, done: int, ok: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.report is not None and (final or now - self.last >= PROGRESS_EVERY_S):
            self.last = now
            self.report(done, ok)


def write_shard(unit, output_url: str, opts: JobOptions, storage_options=None, registry=None,
                on_progress=None) -> dict:
    """Process a unit and commit its shard; returns the stats written to NNNNN_stats.json.
    `registry`: the job's dedup registry (data_prep.dedup), used when opts.dedup_images;
    `on_progress(rows_done, samples_ok)`: called about once a second while rows are processed."""
    t0 = time.monotonic()
    name = shard_name(unit.shard)
    registry = _settler(registry) if opts.dedup_images else None
    threads = 1 if unit.rows and unit.rows[0]["kind"] == GENERATED else opts.threads
    results, original_bytes, ok = [], 0, 0
    tick = _Ticker(on_progress)
    with tempfile.TemporaryDirectory(prefix="frozen_scale-prep-") as tmp:
        spill = _Spill(os.path.join(tmp, "samples.bin"))
        for res in _ordered_results(unit.rows, opts, storage_options, threads):
            original_bytes += res.meta.get("bytes") or 0
            ok += res.status == "success"
            spill.park(res)
            results.append(res)
            tick(len(results), ok)
        tick(len(results), ok, final=True)
        t_settle = time.monotonic()
        if registry is not None:
            _mark_duplicates(unit.shard, results, registry)
        t_write = time.monotonic()
        tar_path = os.path.join(tmp, f"{name}.tar")
        counts, errors, totals, records = _write_tar(tar_path, results, spill)
        spill.close()
        tar_sha = _sha256_file(tar_path)
        storage.atomic_put_file(tar_path, storage.join(output_url, f"{name}.tar"), storage_options)
        table = io.BytesIO()
        pq.write_table(_status_table(records), table)
        storage.atomic_write_bytes(storage.join(output_url, f"{name}.parquet"), table.getvalue(), storage_options)
        stats = {
            "shard": unit.shard, "tar": f"{name}.tar", "status_table": f"{name}.parquet",
            "first_row": unit.rows[0]["row"] if unit.rows else None, "count": len(unit.rows),
            "num_samples": counts["success"], "successes": counts["success"],
            "failed": len(unit.rows) - counts["success"],
            "status_counts": {s: counts[s] for s in STATUSES if counts[s]},
            "error_histogram": dict(sorted(errors.items())),
            "tar_bytes": os.path.getsize(tar_path), "tar_sha256": tar_sha, "original_bytes": original_bytes,
            "durations": {"total_s": round(time.monotonic() - t0, 4),
                          "download_s_sum": round(totals["download_s"], 4),
                          "process_s_sum": round(totals["process_s"], 4),
                          "dedup_wait_s": round(t_write - t_settle, 4),
                          "upload_s": round(time.monotonic() - t_write, 4)},
        }
    # Written last: its presence is what makes the shard committed.
    storage.atomic_write_bytes(storage.join(output_url, f"{name}_stats.json"),
                               json.dumps(stats, indent=1, sort_keys=True).encode(), storage_options)
    return stats


def _write_tar(tar_path: str, results: list, spill) -> tuple:
    """The shard's tar (successful samples, in row order); (status counts, error counts, time
    totals, status-table records)."""
    counts, errors = collections.Counter(), collections.Counter()
    totals, records = {"download_s": 0.0, "process_s": 0.0}, []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for res in results:
            counts[res.status] += 1
            if res.error:
                errors[res.error] += 1
            totals["download_s"] += res.download_s
            totals["process_s"] += res.process_s
            if res.status == "success":
                for ext, data in spill.files(res).items():
                    _add_member(tar, f"{res.key}.{ext}", data)
                _add_member(tar, f"{res.key}.json", json.dumps(_sample_json(res), sort_keys=True).encode("utf-8"))
            records.append(_status_record(res))
    return counts, errors, totals, records


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

