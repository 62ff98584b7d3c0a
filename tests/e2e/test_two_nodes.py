"""Two nodes, simulated: the path a multi-billion-parameter frozen LM takes across nodes.

Two torchrun "nodes" on loopback (node_rank 0 and 1, two CPU ranks each, gloo) train the vision
prefix in front of a Llama-shaped LM of over a billion parameters under ZeRO-3, with the LM, the
shards and the checkpoints on a local S3 server (moto). Each node has its own node cache, as
each machine of a cluster would. Checked:
- the object store sees each of the LM's weight files fetched once per node;
- SIGTERM to one node's trainers makes all four ranks commit one checkpoint and exit 75;
- the resumed job (both nodes again, `train.resume=auto`) continues from that step, finishes
  with exit 0, and fetches no LM byte again (the node caches hold it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frozen_scale.train.checkpoint import committed_steps
from frozen_scale.train.metrics import read_metrics
from tests.support.core_fixtures import big_lm_dir, tiny_config_dict  # noqa: F401  (big_lm_dir: a fixture)
from tests.support.dist_util import REPO, free_port, kill_tree
from tests.e2e.test_resume import wait_for

EXIT_REQUEUE = 75


def launch_node(node_rank: int, port: int, cfg: Path, overrides: list[str], cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
           "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           "-m", "frozen_scale.app.cli", "train", str(cfg), *overrides]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "FROZEN_SCALE_CACHE": str(cache),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           # every S3 filesystem of the ranks waits up to 10 minutes for a response (fsspec's config
           # from the environment): the local server, a thread of the test process, took over the
           # 60 s default to start sending a GB weight file on a loaded 2-core CI machine
           "FSSPEC_S3": json.dumps({"config_kwargs": {"read_timeout": 600}})}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_job(tmp_path: Path, cfg: Path, overrides: list[str], on_started=None, timeout: int = 1200):
    """Both nodes of one job; `on_started(nodes)` runs once rank 0 has logged a step.
    Returns [(exit code, output)] per node."""
    port = free_port()
    nodes = [launch_node(i, port, cfg, overrides, tmp_path / f"node{i}_cache") for i in (0, 1)]
    try:
        if on_started:
            run_dir = tmp_path / "run"
            wait_for(lambda: any("step" in r for r in read_metrics(str(run_dir))), timeout, nodes[0],
                     "a logged step")
            on_started(nodes)
        outputs = [p.communicate(timeout=timeout)[0] for p in nodes]
        return [(p.returncode, out) for p, out in zip(nodes, outputs)]
    finally:
        for p in nodes:
            if p.poll() is None:
                kill_tree(p)


def weight_bytes_served(s3_server, prefix: str) -> dict[str, int]:
    """Bytes of each weight file the store sent in GET responses (s3fs reads a large object in
    several ranged GETs, so bytes, not requests, say how often the file was fetched)."""
    return {key: n for (method, key), n in s3_server.bytes_sent().items()
            if method == "GET" and key.startswith(prefix) and key.endswith(".safetensors")}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 857 s alone on a 2-core CPU: each step of the 1B LM (bf16, 4 ranks) takes 200-250 s
def test_two_nodes_billion_lm_zero3_preempt_and_resume_on_object_storage(tmp_path, big_lm_dir, tiny_shards,
                                                                          s3_server):
    import fsspec

    bucket = s3_server.new_bucket()
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    # one PUT per file (the local server's multipart completion is unreliable for GB-sized parts)
    fs.put(str(big_lm_dir) + "/", f"{bucket[5:]}/lm/", recursive=True, chunksize=2**31)
    fs.put(str(tiny_shards) + "/", f"{bucket[5:]}/shards/", recursive=True)
    weight_files = {p.name: p.stat().st_size for p in Path(big_lm_dir).glob("*.safetensors")}
    assert len(weight_files) >= 2

    cfg_dict = tiny_config_dict(
        f"{bucket}/lm", f"{bucket}/shards", tmp_path / "run",
        data={"num_workers": 0, "max_text_len": 12},
        train={"steps": 1000, "micro_batch_size": 1, "log_every": 1, "precision": "bf16"},
        deepspeed={"stage": 3, "extra": {}},
        checkpoint={"every": 0, "dir": f"{bucket}/ckpt"},
    )
    cfg = tmp_path / "two_nodes.yaml"
    cfg.write_text(yaml.safe_dump(cfg_dict))
    s3_server.reset_counts()

    def preempt_second_node(nodes):
        ranks = subprocess.run(["pgrep", "-P", str(nodes[1].pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        for pid in ranks:
            os.kill(int(pid), signal.SIGTERM)

    first = run_job(tmp_path, cfg, [], on_started=preempt_second_node)
    output = "\n".join(out for _, out in first)
    assert output.count("preempted: checkpoint committed at step") == 4, output[-4000:]
    for code, out in first:  # torchrun reports its ranks' exit code 75 as a failure
        assert code != 0 and "exitcode: 75" in out.replace("  ", " ").replace(" :", ":"), out[-3000:]
    steps = committed_steps(f"{bucket}/ckpt")
    assert len(steps) == 1, steps
    stopped = steps[0]
    served = weight_bytes_served(s3_server, f"{bucket[5:]}/lm/")
    once_per_node = {f"{bucket[5:]}/lm/{name}": 2 * size for name, size in weight_files.items()}
    assert served == once_per_node, (served, once_per_node)

    s3_server.reset_counts()
    second = run_job(tmp_path, cfg, ["train.resume=auto", f"train.steps={stopped + 1}"])
    for code, out in second:
        assert code == 0, out[-4000:]
    assert any(f"step_{stopped:08d}" in out and "resumed from" in out for _, out in second)
    assert committed_steps(f"{bucket}/ckpt")[-1] == stopped + 1
    assert weight_bytes_served(s3_server, f"{bucket[5:]}/lm/") == {}  # the node caches hold the LM
