"""Training at scale: exact resume after SIGKILL, SIGTERM -> save + requeue code, atomic commits,
object-storage data and checkpoints, bad shards, uneven shards, export, incompatible configs, a
world-size change that keeps the optimizer state."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from frozen_scale.config import load_config
from frozen_scale.constants import SHARDS_FORMAT
from frozen_scale.train.checkpoint import committed_steps, prune
from frozen_scale.train.metrics import read_metrics
from frozen_scale.model.lm_identity import lm_identity
from tests.support.core_fixtures import rewrite_checkpoint_file
from tests.support.core_fixtures import corrupt_first_png, save_tiny_lm, tiny_config_dict, truncate_shard, write_shards_plain
from tests.support.dist_util import REPO, check, free_port, kill_tree, torchrun

EXIT_REQUEUE = 75


def write_cfg(tmp_path: Path, name: str, lm_dir, shards, **sections) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(lm_dir, shards, tmp_path / name, **sections)))
    return path


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    steps = committed_steps(str(run_dir / "checkpoints"))
    return load_file(str(run_dir / "checkpoints" / f"step_{steps[-1]:08d}" / "weights.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def popen_torchrun(nproc: int, args: list[str], env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "-m", "frozen_scale.app.cli", "train", *args]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    t0 = time.time()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (exit {proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_lm_dir, tiny_shards):
    """Two ranks x two loader workers; SIGKILL at a random moment after a checkpoint; resume.

    The killed run holds after the step following its checkpoint, so a fast machine cannot
    finish the run between the checkpoint and the kill; the kill lands in that step or the hold."""
    sections = dict(train={"steps": 12, "log_every": 2}, checkpoint={"every": 3, "keep_last": 5},
                    data={"num_workers": 2}, debug={"log_sample_keys": True})
    ref_cfg = write_cfg(tmp_path, "ref", tiny_lm_dir, tiny_shards, **sections)
    check(torchrun(2, ["train", str(ref_cfg)], module="frozen_scale.app.cli"))

    kill_after = random.Random(os.getpid()).choice([3, 6, 9])
    cfg = write_cfg(tmp_path, "killed", tiny_lm_dir, tiny_shards, **sections)
    proc = popen_torchrun(2, [str(cfg), f"debug.fault=hold_after@{kill_after + 1}"], {})
    marker = tmp_path / "killed" / "checkpoints" / f"step_{kill_after:08d}" / "COMMITTED"
    wait_for(marker.exists, 300, proc, f"checkpoint {kill_after}")
    time.sleep(random.Random(1).uniform(0.0, 0.3))
    assert len(kill_tree(proc)) >= 3, "torchrun had no ranks to kill"
    assert committed_steps(str(tmp_path / "killed" / "checkpoints"))[-1] == kill_after
    check(torchrun(2, ["train", str(cfg), "train.resume=auto"], module="frozen_scale.app.cli"))

    diff = max_abs_diff(final_weights(tmp_path / "ref"), final_weights(tmp_path / "killed"))
    assert diff <= 1e-6, f"killed after step {kill_after}: max abs diff {diff}"
    for rank in (0, 1):
        ref_keys = (tmp_path / "ref" / f"sample_keys_rank{rank}.txt").read_text().split()
        got_keys = (tmp_path / "killed" / f"sample_keys_rank{rank}.txt").read_text().split()
        assert len(ref_keys) == 12 * 4
        assert got_keys == ref_keys, f"rank {rank}: sample order differs after resume"


@pytest.mark.slow
def test_sigterm_commits_a_checkpoint_and_exits_with_the_requeue_code(tmp_path, tiny_lm_dir, tiny_shards):
    cfg = write_cfg(tmp_path, "term", tiny_lm_dir, tiny_shards, train={"steps": 100000, "log_every": 1},
                    checkpoint={"every": 0})
    proc = popen_torchrun(2, [str(cfg)], {})
    wait_for(lambda: len(read_metrics(str(tmp_path / "term"))) >= 2, 300, proc, "two logged steps")
    # SIGTERM to one rank only: the ranks agree to stop at the same step
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert "exitcode  : 75" in out or "exitcode: 75" in out.replace("  ", " "), out[-3000:]
    steps = committed_steps(str(tmp_path / "term" / "checkpoints"))
    assert len(steps) == 1 and steps[0] >= 2
    stopped = steps[0]
    check(torchrun(2, ["train", str(cfg), "train.resume=auto", f"train.steps={stopped + 2}"], module="frozen_scale.app.cli"))
    assert committed_steps(str(tmp_path / "term" / "checkpoints"))[-1] == stopped + 2


def test_sigterm_single_process_exit_code(tmp_path, tiny_lm_dir, tiny_shards):
    cfg = write_cfg(tmp_path, "term1", tiny_lm_dir, tiny_shards, train={"steps": 100000, "log_every": 1},
                    checkpoint={"every": 0})
    proc = subprocess.Popen([sys.executable, "-m", "frozen_scale.app.cli", "train", str(cfg)], cwd=REPO,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(read_metrics(str(tmp_path / "term1"))) >= 1, 300, proc, "a logged step")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    assert len(committed_steps(str(tmp_path / "term1" / "checkpoints"))) == 1


@pytest.mark.slow
def test_crash_before_commit_marker_leaves_previous_checkpoint(tmp_path, tiny_lm_dir, tiny_shards):
    cfg = write_cfg(tmp_path, "crash", tiny_lm_dir, tiny_shards, train={"steps": 6}, checkpoint={"every": 2})
    proc = torchrun(2, ["train", str(cfg), "debug.fault=crash_before_commit@4"], module="frozen_scale.app.cli")
    assert proc.returncode != 0
    ckpts = tmp_path / "crash" / "checkpoints"
    assert committed_steps(str(ckpts)) == [2]
    assert (ckpts / "step_00000004" / "weights.safetensors").exists()  # files written, never committed
    resumed = torchrun(2, ["train", str(cfg), "train.resume=auto"], module="frozen_scale.app.cli")
    check(resumed)
    assert "resumed from" in resumed.stderr + resumed.stdout and "step_00000002" in resumed.stderr + resumed.stdout
    assert committed_steps(str(ckpts))[-1] == 6
    assert not (ckpts / "step_00000004" / "COMMITTED").exists() or committed_steps(str(ckpts)).count(4) == 1


@pytest.mark.slow
def test_streams_shards_from_s3_and_checkpoints_to_s3(tmp_path, tiny_lm_dir, tiny_shards, s3_server):
    import fsspec

    bucket = s3_server.new_bucket()
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    fs.put(str(tiny_shards) + "/", f"{bucket[5:]}/shards/", recursive=True)
    cfg = write_cfg(tmp_path, "s3run", tiny_lm_dir, f"{bucket}/shards", train={"steps": 4},
                    checkpoint={"every": 2, "dir": f"{bucket}/ckpt", "keep_last": 1})
    check(torchrun(2, ["train", str(cfg)], module="frozen_scale.app.cli"))
    assert committed_steps(f"{bucket}/ckpt") == [4]  # keep_last=1 pruned step 2
    assert fs.exists(f"{bucket[5:]}/ckpt/step_00000004/ds/state/zero_pp_rank_1_mp_rank_00_optim_states.pt")
    resumed = torchrun(2, ["train", str(cfg), "train.resume=auto", "train.steps=6"], module="frozen_scale.app.cli")
    check(resumed)
    assert committed_steps(f"{bucket}/ckpt") == [4, 6]  # keep_last=1, but the checkpoint this run started from stays


@pytest.mark.slow
def test_bad_and_uneven_shards_over_two_ranks_and_two_workers(tmp_path, tiny_lm_dir):
    root = tmp_path / "uneven"
    sizes = [13, 2, 7, 1, 9, 5]
    shards = []
    for i, n in enumerate(sizes):
        sub = write_shards_plain(tmp_path / f"part{i}", count=n, per_shard=n, seed=i)
        (root).mkdir(exist_ok=True)
        os.replace(sub / "00000.tar", root / f"{i:05d}.tar")
        shards.append({"name": f"{i:05d}.tar", "num_samples": n})
    truncate_shard(root / "00000.tar")
    corrupt_first_png(root / "00002.tar")
    (root / "manifest.json").write_text(json.dumps({"format": SHARDS_FORMAT,
                                                    "num_samples": sum(sizes), "shards": shards}))
    cfg = write_cfg(tmp_path, "bad", tiny_lm_dir, root, train={"steps": 12, "log_every": 4, "micro_batch_size": 2},
                    data={"num_workers": 2, "shuffle_buffer": 4}, checkpoint={"every": 0})
    check(torchrun(2, ["train", str(cfg)], module="frozen_scale.app.cli", timeout=400))
    last = read_metrics(str(tmp_path / "bad"))[-1]
    assert last["step"] == 12
    assert last["corrupt_samples"] >= 1
    assert last["shard_errors"] >= 1


def test_export_generates_the_same_captions_as_the_trained_model(tmp_path, tiny_lm_dir, tiny_shards):
    from frozen_scale.world.evaluation import caption_eval
    from frozen_scale.model.frozen_vlm import FrozenVLM
    from frozen_scale.model.lm import load_tokenizer
    from frozen_scale.train.export import export
    from frozen_scale.train.trainer import Trainer

    cfg = load_config(write_cfg(tmp_path, "exp", tiny_lm_dir, tiny_shards, train={"steps": 3, "lr": 1e-2}))
    trainer = Trainer(cfg)
    assert trainer.fit() == 0
    tok = load_tokenizer(str(tiny_lm_dir))
    kw = dict(seed=5, split="eval", n=8, prompt=cfg.data.prompt, max_new_tokens=8, progress=False)
    trained = caption_eval(trainer.engine.module, tok, **kw)
    out = export(str(tmp_path / "exp"))
    loaded = FrozenVLM.from_pretrained(out)
    again = caption_eval(loaded, tok, **kw)
    assert [e["prediction"] for e in trained["caption_examples"]] == [e["prediction"] for e in again["caption_examples"]]
    meta = json.loads((Path(out) / "frozen_vlm.json").read_text())
    assert meta["lm"]["path"] == str(tiny_lm_dir) and len(meta["lm"]["sha256"]) == 64
    assert meta["lm"]["identity"] == lm_identity(str(tiny_lm_dir))
    assert not any(k.startswith("lm.") for k in load_file(str(Path(out) / "prefix.safetensors")))
    other = save_tiny_lm(tmp_path / "other_lm", seed=1)  # same shapes, other weights
    with pytest.raises(ValueError, match="not the one this export was trained against.*weight values differ"):
        FrozenVLM.from_pretrained(out, lm_path=str(other))
    FrozenVLM.from_pretrained(out, lm_path=str(other), check_lm=False)
    meta["lm"].pop("identity")  # an export from before the identity: the full sha256 decides
    (Path(out) / "frozen_vlm.json").write_text(json.dumps(meta))
    FrozenVLM.from_pretrained(out)
    with pytest.raises(ValueError, match="sha256 differs"):
        FrozenVLM.from_pretrained(out, lm_path=str(other))


@pytest.mark.slow
def test_zero3_export_gathers_partitions_and_world_size_change_policy(tmp_path, tiny_lm_dir, tiny_shards):
    """ZeRO-3 and ZeRO-2 runs of the same math export the same weights; a 2-rank checkpoint
    from before the consolidated optimizer state (no optimizer.safetensors) resumes on 1 rank
    with its weights restored and the moments from zero (documented elastic policy; a
    checkpoint that has the file keeps them: test_world_size_change_keeps_the_optimizer)."""
    z3 = write_cfg(tmp_path, "z3", tiny_lm_dir, tiny_shards, train={"steps": 3}, deepspeed={"stage": 3})
    z2 = write_cfg(tmp_path, "z2", tiny_lm_dir, tiny_shards, train={"steps": 3}, deepspeed={"stage": 2})
    check(torchrun(2, ["train", str(z3)], module="frozen_scale.app.cli"))
    check(torchrun(2, ["train", str(z2)], module="frozen_scale.app.cli"))
    w3, w2 = final_weights(tmp_path / "z3"), final_weights(tmp_path / "z2")
    assert all(v.numel() > 0 for v in w3.values())
    assert max_abs_diff(w3, w2) < 1e-5
    ckpt = tmp_path / "z2" / "checkpoints" / "step_00000003"
    (ckpt / "optimizer.safetensors").unlink()  # an older checkpoint: made without the file, so not in its marker
    marker = json.loads((ckpt / "COMMITTED").read_text())
    del marker["files"]["optimizer.safetensors"]
    (ckpt / "COMMITTED").write_text(json.dumps(marker))
    one = torchrun(1, ["train", str(z2), "train.resume=auto", "train.steps=5"], module="frozen_scale.app.cli")
    check(one)
    assert "optimizer moments restart" in one.stderr + one.stdout
    assert committed_steps(str(tmp_path / "z2" / "checkpoints"))[-1] == 5


@pytest.fixture(scope="module")
def pretrained_lm_dir(tmp_path_factory) -> Path:
    """A tiny LM that has learned the world's text (a prefix can lower its caption loss; a
    random one barely reacts to the prefix)."""
    from frozen_scale.world.config import LMPretrainConfig
    from frozen_scale.world.pretrain_lm import pretrain

    out = tmp_path_factory.mktemp("pretrained_lm") / "lm"
    pretrain(LMPretrainConfig(n_layer=2, n_embd=32, n_head=2, steps=300, batch_size=32, seq_len=48,
                              num_documents=3000, lr=3e-3), str(out), seed=0, progress=False)
    return out


@pytest.mark.slow
def test_world_size_change_keeps_the_optimizer(tmp_path, pretrained_lm_dir, tiny_shards):
    """2 ranks -> 1 rank -> 2 ranks (the global batch kept through grad_accum): after each
    resume the optimizer state the run holds (fp32 master weights, Adam moments and step count,
    gathered) equals the checkpoint's, and the loss carries on from where it was. A constant lr
    of 3e-2 after warm-up makes lost moments show: restarted from zero, the first steps after
    the resume send the loss back above the warm-up loss (1.86 against 1.77 at step 1, 1.04
    before the resume, when the checkpoint's optimizer.safetensors is deleted first)."""
    from safetensors import safe_open

    from frozen_scale.train.checkpoint import read_optimizer_state

    cfg = write_cfg(tmp_path, "ws", pretrained_lm_dir, tiny_shards,
                    train={"steps": 8, "lr": 3e-2, "warmup_steps": 2, "min_lr_ratio": 1.0, "log_every": 1},
                    checkpoint={"every": 0, "keep_last": 5}, data={"num_workers": 0})
    ckpts, worker = tmp_path / "ws" / "checkpoints", str(REPO / "tests" / "support" / "resume_worker.py")
    check(torchrun(2, ["train", str(cfg)], module="frozen_scale.app.cli"))
    for ranks, accum, start, end in [(1, 2, 8, 16), (2, 1, 16, 24)]:
        out = tmp_path / f"resumed_on_{ranks}"
        proc = torchrun(ranks, [worker, str(cfg), str(out), "train.resume=auto", f"train.steps={end}",
                                f"train.grad_accum={accum}"])
        check(proc)
        assert "optimizer state (fp32 master weights, Adam moments and step count) are restored" in proc.stderr
        saved, saved_step = read_optimizer_state(ckpts / f"step_{start:08d}" / "optimizer.safetensors")
        with safe_open(f"{out}.safetensors", framework="pt") as held:
            assert held.metadata()["world_size"] == str(ranks)
            assert int(held.metadata()["adam_step"]) == saved_step == start
            assert set(held.keys()) == set(saved) and any(k.endswith(".exp_avg_sq") for k in saved)
            for key, value in saved.items():
                diff = float((held.get_tensor(key) - value).abs().max())
                assert diff <= 1e-6, f"resumed on {ranks} rank(s): {key} differs by {diff}"
            assert float(saved[next(k for k in saved if k.endswith(".exp_avg_sq"))].abs().max()) > 0

    loss = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "ws"))}
    assert sorted(loss) == list(range(1, 25))
    warm = loss[1]
    for start in (8, 16):
        before = (loss[start - 1] + loss[start]) / 2
        after = max(loss[s] for s in range(start + 1, start + 5))
        assert before < warm - 0.3, loss  # the prefix did learn before the resume
        assert after - before <= 0.4 * (warm - before), f"loss after the resume at step {start}: {loss}"


def test_incompatible_checkpoint_is_refused_with_what_differs(tmp_path, tiny_lm_dir, tiny_shards):
    from frozen_scale.train.trainer import Trainer

    cfg = load_config(write_cfg(tmp_path, "inc", tiny_lm_dir, tiny_shards, train={"steps": 1}))
    assert Trainer(cfg).fit() == 0
    cfg2 = load_config(write_cfg(tmp_path, "inc", tiny_lm_dir, tiny_shards, train={"steps": 2, "resume": "auto"},
                                 model={"prefix_length": 3}))
    with pytest.raises(ValueError, match=r"incompatible.*prefix_length: checkpoint has 2, this run has 3"):
        Trainer(cfg2)
    other = save_tiny_lm(tmp_path / "other_lm", seed=1)  # same shapes, other weights
    cfg3 = load_config(write_cfg(tmp_path, "inc", other, tiny_shards, train={"steps": 2, "resume": "auto"}))
    with pytest.raises(ValueError, match=r"incompatible.*lm_identity.values: checkpoint has"):
        Trainer(cfg3)

    # a checkpoint from before the cheap identity names its LM by the full sha256
    ckpt_dir = tmp_path / "inc" / "checkpoints" / "step_00000001"
    state = json.loads((ckpt_dir / "trainer_state.json").read_text())
    del state["fingerprint"]["lm_identity"]
    state["fingerprint"]["lm_sha256"] = state["lm"]["sha256"]
    rewrite_checkpoint_file(ckpt_dir, "trainer_state.json", json.dumps(state))
    with pytest.raises(ValueError, match=r"incompatible.*lm_sha256: checkpoint has"):
        Trainer(cfg3)
    resumed = Trainer(load_config(write_cfg(tmp_path, "inc", tiny_lm_dir, tiny_shards,
                                            train={"steps": 2, "resume": "auto"})))
    assert resumed.checkpoints.resume_state["step"] == 1


def test_prune_keeps_the_newest_committed_and_drops_stale_partials(tmp_path):
    root = tmp_path / "ck"
    for step, committed in [(1, True), (2, True), (3, False), (4, True), (5, False)]:
        d = root / f"step_{step:08d}"
        d.mkdir(parents=True)
        (d / "x").write_text("x")
        if committed:
            (d / "COMMITTED").write_text("{}")
    prune(str(root), keep_last=1)
    assert committed_steps(str(root)) == [4]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000005"]  # 5 may be in progress


def test_loader_order_is_deterministic_and_replayable(tiny_lm_dir, tiny_shards):
    """The stream resumed from a saved position yields exactly the batches that followed it."""
    from frozen_scale.data.loader import CaptionStream, ResumableBatches, StreamState
    from frozen_scale.data.shards import list_shards
    from frozen_scale.model.lm import load_tokenizer

    tok = load_tokenizer(str(tiny_lm_dir))

    def stream(state=None):
        ds = CaptionStream(list_shards(str(tiny_shards)), tok, k=2, image_size=16, batch_size=5, seed=3, rank=1,
                           world_size=2, shuffle_buffer=8, state=state)
        return ResumableBatches(ds, num_workers=2)

    full = stream()
    keys = [next(full)["keys"] for _ in range(9)]
    part = stream()
    for _ in range(5):
        next(part)
    saved = StreamState.from_dict(json.loads(json.dumps(part.state.to_dict())))
    resumed = stream(saved)
    assert [next(resumed)["keys"] for _ in range(4)] == keys[5:]
    assert len({k for b in keys for k in b}) > 30  # different samples, shuffled across shards
    assert np.mean([k.startswith("train-") for b in keys for k in b]) == 1.0
