"""The Ray job: work units -> shard tasks (bounded in flight, retried) -> manifest.json.

    manifest = run_job(source, "s3://bucket/cc3m", JobOptions(...))

Ray is initialised here when there is work and it is not already (a new local instance, or
`address=` a cluster), and shut down again if this call started it; `in_process=True` writes the
shards one after another in this process instead, without Ray (small jobs: tests, benchmarks). Committed shards are
skipped, so re-running a job resumes it (and re-running a finished one starts nothing).
The job's dedup registry and progress board are actors kept on the driver's node, so losing a
worker node costs only its tasks, which Ray runs again elsewhere.
A unit whose task still fails after its retries is reported (PrepIncomplete) after the manifest
of everything committed has been written; re-running the job retries just those units.
"""

from __future__ import annotations

import logging
import os
import time

import ray

from data_prep import manifest as mf
from data_prep.dedup import HashRegistry, LocalRegistry, committed_hashes
from data_prep.generated import KIND as GENERATED
from data_prep.options import JobOptions
from data_prep.progress import REFRESH_S, JobProgress, ProgressBoard
from data_prep.shard import write_shard
from data_prep.sources import count_hint, units
from frozen_scale.constants import SHARDS_FORMAT
from frozen_scale.secrets import looks_secret, redact

log = logging.getLogger(__name__)
FORWARDED_ENV = ("AWS_", "FSSPEC_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")


class PrepIncomplete(RuntimeError):
    """Some units failed after all retries; their rows are in no shard yet (re-run to retry)."""

    def __init__(self, failed: dict[int, str], manifest: dict):
        self.failed, self.manifest = failed, manifest
        first = next(iter(failed.items()))
        super().__init__(f"{len(failed)} shard(s) failed after retries (e.g. shard {first[0]}: "
                         f"{first[1]}); committed shards are in the manifest, re-run to retry the rest")


@ray.remote(num_cpus=1)
def _shard_task(unit, output_url, opts, storage_options, registry, board):
    def report(rows: int, ok: int) -> None:
        board.report.remote(unit.shard, rows, ok)  # fire and forget

    return write_shard(unit, output_url, opts, storage_options, registry,
                       on_progress=report if board is not None else None)


def _forwarded_env() -> dict[str, str]:
    """Storage settings for the Ray workers (endpoints, regions, fsspec options): never a secret,
    which a runtime_env would show in Ray's job and task listings; workers of a cluster take their
    credentials from their nodes' environment (a local Ray's workers inherit this process's)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV) and not looks_secret(k)}


def _start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Initialise Ray if needed; True if this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    if address:
        ray.init(address=address, **kwargs)
        return True
    # Local workers inherit this process's environment: make this checkout importable to them
    # even when the package is not installed (running from a source tree).
    saved = os.environ.get("PYTHONPATH")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, saved) if p)
    try:
        # "local": always a fresh instance, never a cluster someone started on this machine. It has
        # no dashboard, so nothing reads its metrics: not collecting them saves CPU in every process.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                 _system_config={"enable_metrics_collection": False}, **kwargs)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return True


def _pinned_here() -> dict:
    """Actor options keeping an actor on the driver's node: a lost worker node must not take the
    job's dedup registry or progress board with it (if the driver's node goes, so does the job)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                  soft=False)}


def _failure(err: BaseException) -> str:
    """A failed shard's reason: the error's type and the last line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"


def _write_units_here(source, output_url: str, opts: JobOptions, storage_options, done: set[int],
                      max_retries: int, bar: JobProgress) -> dict[int, str]:
    """Every pending unit written by this process, in order, with the retries Ray would give a
    task (OSError, TimeoutError); returns the units that still failed, with their error. Image
    dedup across shards goes through a one-process registry (the same answers as the actor)."""
    registry = None
    if opts.dedup_images and source.kind != GENERATED:
        registry = LocalRegistry()
        if done:
            registry.seed(committed_hashes(output_url, sorted(done), storage_options), sorted(done))
    failed: dict[int, str] = {}
    for unit in units(source, opts.samples_per_shard, opts.dedup_urls, skip=done, on_total=bar.set_total):
        for attempt in range(max_retries + 1):
            try:
                bar.shard_done(unit.shard, write_shard(unit, output_url, opts, storage_options, registry))
                break
            except (OSError, TimeoutError) as err:
                if attempt == max_retries:
                    failed[unit.shard] = _failure(err)
            except ValueError as err:
                failed[unit.shard] = _failure(err)
                break
        if unit.shard in failed:
            log.error("shard %05d failed: %s", unit.shard, failed[unit.shard])
            bar.shard_failed(unit.shard)
    return failed


def run_job(source, output_url: str, opts: JobOptions, *, storage_options: dict | None = None,
            address: str | None = None, num_cpus: int | None = None, max_in_flight: int | None = None,
            max_retries: int = 3, progress: bool = True, in_process: bool = False) -> dict:
    """Prepare `source` into shards under `output_url`; returns the manifest written there.
    in_process: no Ray; this process writes the shards one after another."""
    job = redact({"format": SHARDS_FORMAT, "source": source.describe(), "options": opts.fingerprint()})
    mf.check_job(output_url, job, storage_options)
    mf.remove_stale_temporaries(output_url, storage_options)
    done = set(mf.committed_shards(output_url, storage_options))
    t0 = time.monotonic()
    rows_done = sum(st["count"] for st in mf.read_stats(output_url, sorted(done), storage_options).values())
    bar = JobProgress(count_hint(source), progress, rows_done)
    if in_process:
        try:
            failed = _write_units_here(source, output_url, opts, storage_options, done, max_retries, bar)
        finally:
            bar.close()
    else:
        run = _RayRun(output_url, opts, storage_options, done, bar, progress)
        try:
            for unit in units(source, opts.samples_per_shard, opts.dedup_urls, skip=done, on_total=bar.set_total):
                run.submit(unit, source, address, num_cpus, max_in_flight, max_retries)
            run.drain()
        finally:
            run.close()
        failed = run.failed
    manifest = mf.build_manifest(output_url, storage_options,
                                 {"complete": not failed, "failed_shards": sorted(failed),
                                  "source": job["source"], "seconds": round(time.monotonic() - t0, 3)})
    mf.write_manifest(output_url, manifest, storage_options)
    if failed:
        raise PrepIncomplete(failed, manifest)
    return manifest


class _RayRun:
    """Shard tasks on Ray, at most one per CPU in flight; failures are kept per shard."""

    def __init__(self, output_url: str, opts: JobOptions, storage_options, done: set[int], bar: JobProgress,
                 progress: bool):
        self.output_url, self.opts, self.storage_options, self.done = output_url, opts, storage_options, done
        self.bar, self.progress = bar, progress
        self.failed: dict[int, str] = {}
        self.pending: dict = {}
        self.started, self.registry, self.board, self.task, self.limit = False, None, None, None, 1
        self.last_look = time.monotonic()

    def _start(self, source, address, num_cpus, max_in_flight, max_retries) -> None:
        """Ray starts only once there is work: re-running a finished job is instant."""
        self.started = _start_ray(address, num_cpus)
        # One task per CPU: more in flight makes Ray start extra worker processes for the queued
        # tasks (a one-off cost each), while a finished task's successor is submitted at once.
        self.limit = max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
        if self.opts.dedup_images and source.kind != GENERATED:
            self.registry = HashRegistry.options(**_pinned_here()).remote()
            done = sorted(self.done)
            seed = committed_hashes(self.output_url, done, self.storage_options) if done else []
            ray.get(self.registry.seed.remote(seed, done))
        if self.progress:
            self.board = ProgressBoard.options(**_pinned_here()).remote()
        task_options = dict(max_retries=max_retries, retry_exceptions=[OSError, TimeoutError])
        if not self.started and _forwarded_env():
            # Workers of a Ray we did not start may not share this process's storage settings.
            task_options["runtime_env"] = {"env_vars": _forwarded_env()}
        self.task = _shard_task.options(**task_options)

    def submit(self, unit, source, address, num_cpus, max_in_flight, max_retries) -> None:
        if self.task is None:
            self._start(source, address, num_cpus, max_in_flight, max_retries)
        while len(self.pending) >= self.limit:
            self._wait_some()
        ref = self.task.remote(unit, self.output_url, self.opts, self.storage_options, self.registry, self.board)
        self.pending[ref] = unit.shard

    def drain(self) -> None:
        while self.pending:
            self._wait_some()

    def _wait_some(self) -> None:
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=REFRESH_S if self.board is not None else None)
        self._collect(ready)
        if self.board is not None and time.monotonic() - self.last_look >= REFRESH_S:
            self.bar.update_running(ray.get(self.board.snapshot.remote()))
            self.last_look = time.monotonic()

    def _collect(self, ready) -> None:
        for ref in ready:
            shard = self.pending.pop(ref)
            try:
                self.bar.shard_done(shard, ray.get(ref))
            except (ray.exceptions.RayError, OSError, ValueError) as err:
                self.failed[shard] = _failure(err)
                log.error("shard %05d failed: %s", shard, self.failed[shard])
                self.bar.shard_failed(shard)
                if self.registry is not None:  # later shards must not wait for it
                    self.registry.give_up.remote(shard)

    def close(self) -> None:
        self.bar.close()
        if self.started:
            ray.shutdown()
        else:
            for actor in (self.registry, self.board):
                if actor is not None:
                    ray.kill(actor)
