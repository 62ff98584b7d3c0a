"""Checkpoints as the world damages and reuses them: flipped bytes and truncated files in the
newest of three committed checkpoints (resume falls back, export refuses), run folders that
already hold another lineage's checkpoints, and two jobs on one folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from frozen_scale.config import InputError, load_config
from frozen_scale.train import integrity, lineage
from frozen_scale.train.checkpoint import committed_steps, prune
from tests.support.core_fixtures import tiny_config_dict
from tests.support.dist_util import REPO, child_env

CLI = [sys.executable, "-m", "frozen_scale.app.cli"]


def write_cfg(tmp: Path, run: Path, lm_dir, shards, **sections) -> Path:
    path = tmp / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(lm_dir, shards, run, **sections)))
    return path


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=REPO, env=child_env(env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, tiny_lm_dir, tiny_shards) -> Path:
    """A finished run with committed checkpoints at steps 2, 4 and 6 (one process, ZeRO-2)."""
    tmp = tmp_path_factory.mktemp("three")
    cfg = write_cfg(tmp, tmp / "run", tiny_lm_dir, tiny_shards,
                    train={"steps": 6}, checkpoint={"every": 2, "keep_last": 3}, data={"num_workers": 0})
    done = cli("train", cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    assert committed_steps(str(tmp / "run" / "checkpoints")) == [2, 4, 6]
    return tmp / "run"


def file_kinds(ckpt: Path) -> list[str]:
    """One file of each kind a checkpoint holds."""
    names = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != "COMMITTED")
    kinds = {}
    for name in names:
        kind = name.rsplit("/", 1)[-1].split("rank_")[0] + name.rsplit(".", 1)[-1]
        kinds.setdefault(kind, name)
    return sorted(kinds.values())


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(data[: len(data) // 2]))


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["train"]["run_dir"] = str(dst)
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dst


def test_every_file_kind_is_recorded(three_checkpoints):
    ckpt = three_checkpoints / "checkpoints" / "step_00000006"
    marker = json.loads((ckpt / "COMMITTED").read_text())
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != "COMMITTED"}
    assert set(marker["files"]) == on_disk and marker["hash"] == "sha256"
    for name, (size, digest) in marker["files"].items():
        assert (ckpt / name).stat().st_size == size
        assert hashlib.sha256((ckpt / name).read_bytes()).hexdigest() == digest
    assert len(file_kinds(ckpt)) >= 5  # weights, optimizer, trainer state, rank state, DeepSpeed's files


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_newest_falls_back_and_export_refuses(how, three_checkpoints, tmp_path):
    kinds = file_kinds(three_checkpoints / "checkpoints" / "step_00000006")
    for i, kind in enumerate(kinds):
        run = copy_run(three_checkpoints, tmp_path / f"run{i}")
        newest = run / "checkpoints" / "step_00000006"
        damage(newest / kind, how)
        done = cli("export", run, "--checkpoint", newest, "--out", tmp_path / f"x{i}")
        assert done.returncode == 2, (kind, done.stderr[-2000:])
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and kind in lines[0] and "damaged" in lines[0], (kind, done.stderr)
        # resume=auto: the damaged one is set aside (never deleted), the previous one verifies
        url = lineage.newest(str(run / "checkpoints"))
        assert url.endswith("step_00000004"), (kind, url)
        assert (newest / integrity.DAMAGED_MARKER).exists() and (newest / kind).exists()
        assert kind in json.loads((newest / integrity.DAMAGED_MARKER).read_text())["problem"]
        assert committed_steps(str(run / "checkpoints")) == [2, 4]


def test_resume_falls_back_in_one_line_and_training_goes_on(three_checkpoints, tmp_path, tiny_lm_dir):
    run = copy_run(three_checkpoints, tmp_path / "run")
    damage(run / "checkpoints" / "step_00000006" / "ds" / "state" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
           "truncate")
    done = cli("train", run / "config.yaml", "train.resume=auto", "train.steps=8")
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stderr + done.stdout
    assert said.count("is damaged (ds/state/zero_pp_rank_0_mp_rank_00_optim_states.pt") == 1, said[-3000:]
    assert "resumed from" in said and "step_00000004" in said
    assert committed_steps(str(run / "checkpoints"))[-1] == 8


def test_a_damaged_export_refuses_to_load(three_checkpoints, tmp_path):
    out = tmp_path / "export"
    done = cli("export", three_checkpoints, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    damage(out / "prefix.safetensors", "flip")
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    for argv in (["generate", out, "--image", image], ["eval", out, "--task", "caption", "--num-samples", "4"]):
        done = cli(*argv)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (argv[0], done.stderr[-2000:])
        assert "prefix.safetensors" in lines[0] and "damaged" in lines[0], (argv[0], lines)
    from frozen_scale.model.frozen_vlm import FrozenVLM

    with pytest.raises(InputError, match="prefix.safetensors.*damaged"):
        FrozenVLM.from_pretrained(str(out))


def test_prune_keeps_the_new_lineage_and_what_it_started_from(tmp_path):
    """An older run committed 250 and 300; a rollback from 100 commits 150: keep_last=2 keeps 150
    (the newest by commit order) and 300, and never the rollback's origin unless asked."""
    root = tmp_path / "ck"
    for seq, (step, line) in enumerate([(100, "old"), (250, "old"), (300, "old"), (150, "new")], start=1):
        d = root / f"step_{step:08d}"
        d.mkdir(parents=True)
        (d / "COMMITTED").write_text(json.dumps({"step": step, "seq": seq, "lineage": line}))
    assert prune(str(root), keep_last=2, protect=(str(root / "step_00000100"),)) == [250]
    assert committed_steps(str(root)) == [100, 150, 300]
    assert prune(str(root), keep_last=2) == [100]
    assert committed_steps(str(root)) == [150, 300]


def test_fresh_start_into_a_used_folder_is_refused(three_checkpoints, tmp_path):
    run = copy_run(three_checkpoints, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    done = cli("train", run / "config.yaml")
    assert done.returncode == 2
    assert "already holds committed checkpoints" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # config.yaml untouched


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerunning_a_finished_run_changes_nothing(three_checkpoints, tmp_path):
    """Resumed at its last step, a finished run trains nothing, saves nothing and exits 0; the
    first re-run records only its resolved config (train.resume=auto), the next changes no file."""
    run = copy_run(three_checkpoints, tmp_path / "run")
    checkpoints = tree_hashes(run / "checkpoints")
    for _ in range(2):
        before = tree_hashes(run)
        done = cli("train", run / "config.yaml", "train.resume=auto")
        assert done.returncode == 0, done.stderr[-3000:]
        after = tree_hashes(run)
        assert tree_hashes(run / "checkpoints") == checkpoints
    assert after == before, {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


@pytest.mark.slow
def test_rollback_preempted_and_requeued_continues_its_own_lineage(three_checkpoints, tmp_path):
    """Start again from step 2 (a rollback); TERM after its first commit; the requeue (the same
    command, as launchers repeat it) continues the rollback's lineage, not the old step 6."""
    run = copy_run(three_checkpoints, tmp_path / "run")
    origin = run / "checkpoints" / "step_00000002"
    args = [run / "config.yaml", f"train.resume={origin}", "train.steps=7", "checkpoint.every=1",
            "checkpoint.keep_last=3", "debug.fault=pause_after@4"]
    proc = subprocess.Popen([*CLI, "train", *map(str, args)], cwd=REPO, env=child_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = run / "paused_rank0"
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None and time.time() - t0 < 300, proc.stdout.read()[-3000:] if proc.poll() else "slow"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-3000:]
    new = [c for c in lineage.list_committed(str(run / "checkpoints"))
           if c.lineage == lineage.read_lineage(str(run / "checkpoints"))["lineage"]]
    assert [c.step for c in new] == [3, 4, 5]
    # step 4 was taken by the old lineage's committed checkpoint: never written into, saved beside it
    assert new[1].name == f"step_00000004-{new[1].lineage}" and new[0].name == "step_00000003"
    # keep_last=3 by commit order kept the new lineage and its origin, pruned the old 4 and 6
    assert committed_steps(str(run / "checkpoints")) == [2, 3, 4, 5]
    done = cli("train", *args[:-1])
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stderr + done.stdout
    assert f"resumed from {new[-1].url} at step 5" in said, said[-3000:]
    ours = [c for c in lineage.list_committed(str(run / "checkpoints")) if c.lineage == new[0].lineage]
    assert ours[-1].step == 7


def test_a_second_live_job_is_refused_and_a_killed_one_is_taken_over(tmp_path, tiny_lm_dir, tiny_shards):
    run = tmp_path / "run"
    cfg = write_cfg(tmp_path, run, tiny_lm_dir, tiny_shards, train={"steps": 100000, "log_every": 1},
                    checkpoint={"every": 0, "lease_seconds": 6}, data={"num_workers": 0})
    first = subprocess.Popen([*CLI, "train", str(cfg)], cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
            assert first.poll() is None and time.time() - t0 < 300
            time.sleep(0.1)
        second = cli("train", cfg, "checkpoint.allow_fresh_start=true")
        assert second.returncode == 2 and "another job is training into" in second.stderr, second.stderr[-2000:]
        first.kill()  # kill -9: no lease given back
        first.wait()
        held = json.loads((run / "checkpoints" / "LEASE.json").read_text())
        assert held["pid"] == first.pid and held["expires_at"] > time.time()
        # its process is gone from this host: taken over at once, without waiting for the expiry
        again = cli("train", cfg, "train.steps=2", "checkpoint.allow_fresh_start=true")
        assert again.returncode == 0, again.stderr[-2000:]
    finally:
        if first.poll() is None:
            first.kill()


def test_lease_waits_for_expiry(tmp_path):
    from frozen_scale.train.lease import Lease

    holder = Lease(str(tmp_path), seconds=2)
    holder.owner.update(host="another-node", pid=os.getpid())  # a job on another node: only expiry tells
    holder._write()
    with pytest.raises(InputError, match="another job is training into"):
        Lease(str(tmp_path), seconds=2).acquire()
    time.sleep(2.2)
    taker = Lease(str(tmp_path), seconds=2)
    taker.acquire()
    taker.release()
    assert not (tmp_path / "LEASE.json").exists()


def test_lease_of_a_live_process_on_this_host_holds_and_of_a_reused_pid_does_not(tmp_path):
    from frozen_scale.train.lease import Lease

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = Lease(str(tmp_path), seconds=30)
        holder.owner.update(pid=sleeper.pid, started="")
        holder._write()
        with pytest.raises(InputError, match="another job is training into"):
            Lease(str(tmp_path), seconds=30).acquire()
        holder.owner["started"] = "1"  # the pid now belongs to a process started at another time
        holder._write()
        taker = Lease(str(tmp_path), seconds=30)
        taker.acquire()
        taker.release()
    finally:
        sleeper.kill()


def test_config_knobs_parse():
    cfg = load_config(None, ["checkpoint.allow_fresh_start=true", "checkpoint.lease_seconds=5"])
    assert cfg.checkpoint.allow_fresh_start and cfg.checkpoint.lease_seconds == 5
