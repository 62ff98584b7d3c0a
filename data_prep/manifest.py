"""Committed shards and the job manifest the trainer reads.

A shard is committed when its `NNNNN_stats.json` exists (written after its tar and status table).
`manifest.json` at the output root lists committed shards only, in shard order (the format name
and the file name are `frozen_scale.constants.SHARDS_FORMAT` and `SHARDS_MANIFEST`):

    {"format": "frozen_scale.shards/1", "num_samples": N,
     "shards": [{"name": "00000.tar", "num_samples": n, "stats": "00000_stats.json"}, ...]}
"""

from __future__ import annotations

import json
import re

from frozen_scale import storage
from frozen_scale.constants import SHARDS_FORMAT, SHARDS_MANIFEST

JOB_FILE = "job.json"
STATS_RE = re.compile(r"^(\d{5,})_stats\.json$")


class JobMismatch(ValueError):
    """The output folder holds a different job: resuming into it would mix shards."""


def committed_shards(output_url: str, storage_options=None) -> list[int]:
    return sorted(int(m.group(1)) for n in storage.list_names(output_url, storage_options)
                  if (m := STATS_RE.match(n)))


def remove_stale_temporaries(output_url: str, storage_options=None) -> int:
    """Delete temporary files a killed writer left behind (local disks; object stores have none)."""
    fs, root = storage.filesystem(output_url, storage_options)
    if not storage.is_local(fs):
        return 0
    stale = [n for n in storage.list_names(output_url, storage_options) if n.startswith(".") and ".tmp-" in n]
    for name in stale:
        fs.rm_file(f"{root.rstrip('/')}/{name}")
    return len(stale)


def read_stats(output_url: str, shards: list[int], storage_options=None) -> dict[int, dict]:
    if not shards:
        return {}
    fs, root = storage.filesystem(output_url, storage_options)
    paths = {f"{root.rstrip('/')}/{s:05d}_stats.json": s for s in shards}
    blobs = fs.cat(list(paths))  # concurrent on object stores
    return {paths[p]: json.loads(b) for p, b in blobs.items()}


def build_manifest(output_url: str, storage_options=None, extra: dict | None = None) -> dict:
    stats = read_stats(output_url, committed_shards(output_url, storage_options), storage_options)
    shards = [{"name": st["tar"], "num_samples": st["num_samples"], "stats": f"{s:05d}_stats.json",
               "rows": st["count"]} for s, st in sorted(stats.items())]
    manifest = {"format": SHARDS_FORMAT, "num_samples": sum(s["num_samples"] for s in shards),
                "num_rows": sum(s["rows"] for s in shards), "shards": shards}
    manifest.update(extra or {})
    return manifest


def write_manifest(output_url: str, manifest: dict, storage_options=None) -> None:
    storage.atomic_write_bytes(storage.join(output_url, SHARDS_MANIFEST),
                               json.dumps(manifest, indent=1).encode(), storage_options)


def read_manifest(url: str, storage_options=None) -> dict:
    """Manifest at `url` (the file, or the folder holding manifest.json). A folder of shards
    without one (img2dataset's output) gets one listed from its .tar and _stats.json files:
    shards whose count is unknown have num_samples None, and so has the total."""
    folder = None
    if not url.rstrip("/").endswith(".json"):
        folder, url = url, storage.join(url, SHARDS_MANIFEST)
    try:
        manifest = json.loads(storage.read_bytes(url, storage_options))
    except FileNotFoundError:
        if folder is None:
            raise
        return _listed_manifest(folder, storage_options)
    if manifest.get("format") != SHARDS_FORMAT:
        raise ValueError(f"{url}: not a {SHARDS_FORMAT} manifest (format={manifest.get('format')!r})")
    return manifest


def _listed_manifest(folder: str, storage_options=None) -> dict:
    from frozen_scale.data.shards import folder_shards

    shards = folder_shards(folder, storage_options)
    if not shards:
        raise FileNotFoundError(f"no {SHARDS_MANIFEST} and no .tar shards in {folder}")
    listed = [{"name": s.url.rsplit("/", 1)[-1], "num_samples": s.num_samples} for s in shards]
    known = [s["num_samples"] for s in listed]
    return {"format": SHARDS_FORMAT, "listed_from_folder": True,
            "num_samples": None if None in known else sum(known), "shards": listed}


def check_job(output_url: str, job: dict, storage_options=None) -> None:
    """Record the job description at the output root, or check it matches the recorded one.
    A folder holding shards but no job description (another tool's output, e.g. img2dataset's)
    is refused: resuming into it would mix two jobs' shards."""
    url = storage.join(output_url, JOB_FILE)
    if not storage.exists(url, storage_options) and committed_shards(output_url, storage_options):
        raise JobMismatch(f"{output_url} holds shards not written by `frozen-scale prep` (no {JOB_FILE}; "
                          "an img2dataset output?): train or evaluate on it as it is "
                          f"(data.train_shards={output_url}), or give another --out")
    if storage.exists(url, storage_options):
        recorded = json.loads(storage.read_bytes(url, storage_options))
        if recorded != job:
            old, new = _flatten(recorded), _flatten(job)
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise JobMismatch(f"{output_url} already holds a different job (differs in: {', '.join(diff)}); "
                              "use another --out, or the same input and options to resume")
        return
    storage.atomic_write_bytes(url, json.dumps(job, indent=1, sort_keys=True).encode(), storage_options)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
