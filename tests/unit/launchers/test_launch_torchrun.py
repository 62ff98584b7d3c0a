"""`frozen-scale submit --launcher torchrun`: per-node command lines for a host list, and a real
two-node run on loopback (node_rank 0 and 1, one process each) that trains and checkpoints."""

from __future__ import annotations

import json
import shlex
import socket
import sys
from pathlib import Path

import pytest
import yaml

from frozen_scale.config import ConfigError, load_config
from launchers import cli, hostlist

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_node_commands_for_a_host_list(tiny_run_config, capsys):
    over = ["launcher.nodes=3", "launcher.hosts=[gpu-a, gpu-b, gpu-c]", "launcher.gpus_per_node=8",
            "launcher.master_port=29555", "train.lr=0.01"]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "torchrun", "--dry-run", *over]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    assert len(lines) == 3
    for rank, line in enumerate(lines):
        argv = shlex.split(line)
        assert argv[:2] == ["ssh", "-tt"]  # remote hosts: what runs there is the last argument's last command
        argv = shlex.split(argv[-1].split(" && ")[-1])
        assert "--nnodes=3" in argv and "--nproc-per-node=8" in argv and f"--node-rank={rank}" in argv
        assert "--rdzv-endpoint=gpu-a:29555" in argv  # rendezvous on the first host
        assert argv[-3:] == [str(tiny_run_config), "train.lr=0.01", "train.resume=auto"]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "deepspeed", "--dry-run", *over]) == 0
    ds = [shlex.split(shlex.split(ln)[-1].split(" && ")[-1]) for ln in capsys.readouterr().out.splitlines()
          if not ln.startswith("#")]
    assert ds[2][:5] == ["python", "-m", "launchers.node", "--grace=120", "--"]  # the node supervisor
    assert ds[2][5:12] == ["deepspeed", "--num_nodes=3", "--num_gpus=8", "--node_rank=2", "--master_addr=gpu-a",
                         "--master_port=29555", "--no_ssh"]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "local", "--dry-run", "launcher.gpus_per_node=2"]) == 0
    (local,) = [shlex.split(ln) for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    assert "--nnodes=1" in local and "--nproc-per-node=2" in local
    cfg = load_config(tiny_run_config, over)
    remote = hostlist._remote(cfg, "gpu-b", ["python", "x"], "/work")
    assert remote[:6] == ["ssh", "-tt", "-o", "BatchMode=yes", "--", "gpu-b"] and remote[-1].startswith("cd /work && ")


def test_two_launches_get_their_own_rendezvous(tiny_run_config):
    """launcher.master_port=0 (the default): each launch a fresh rendezvous id and the port from it."""
    cfg = load_config(tiny_run_config, ["launcher.nodes=2", "launcher.hosts=[gpu-a, gpu-b]"])
    ends = set()
    for _ in range(2):
        (_, argv), _ = hostlist.render_node_commands(cfg, "c.yaml", [], "logs")
        ends.add(next(a for a in argv if a.startswith("--rdzv-endpoint=")) + next(a for a in argv if a.startswith("--rdzv-id=")))
    assert len(ends) == 2


def test_host_list_must_match_nodes(tiny_run_config):
    with pytest.raises(ConfigError, match="launcher.hosts lists 1 hosts but launcher.nodes is 2"):
        load_config(tiny_run_config, ["launcher.nodes=2", "launcher.hosts=[a]"])
    with pytest.raises(ConfigError, match="did you mean 'gpus_per_node'"):
        load_config(tiny_run_config, ["launcher.gpus_per_nod=2"])


@pytest.mark.slow
@pytest.mark.parametrize("rdzv", ["static"])  # c10d (the default) runs two agents per host in the Slurm test
def test_two_node_torchrun_on_loopback_trains_and_checkpoints(tiny_run_config, rdzv):
    cfg = yaml.safe_load(Path(tiny_run_config).read_text())
    run_dir = Path(cfg["train"]["run_dir"])
    over = ["launcher.nodes=2", "launcher.hosts=[localhost, 127.0.0.1]", "launcher.gpus_per_node=1",
            f"launcher.rdzv_backend={rdzv}", f"launcher.master_port={_free_port()}",
            f"launcher.python={sys.executable}", "launcher.env={DS_ACCELERATOR: cpu, OMP_NUM_THREADS: '1'}",
            f"launcher.workdir={REPO}"]
    assert cli.submit_main([str(tiny_run_config), "--launcher", "torchrun", *over]) == 0
    final = run_dir / "checkpoints" / f"step_{cfg['train']['steps']:08d}"
    assert (final / "COMMITTED").exists()
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == cfg["train"]["steps"]
    assert sorted(p.name for p in final.glob("rank_*.json")) == ["rank_00000.json", "rank_00001.json"]
    logs = run_dir / "logs"
    assert (logs / "node0.out").exists() and (logs / "node1.out").exists()
    assert len(list((logs / "ranks").rglob("stdout.log"))) == 2  # one per rank, one rank per node
