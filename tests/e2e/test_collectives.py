"""The control plane works under NCCL and stays off the hot path; every distributed process
exits cleanly.

- NCCL reduces CUDA tensors only: every control-plane tensor is made on the rank's device
  (unit test with the device faked, since CI has no GPU);
- at most one control-plane collective per optimizer step outside log and checkpoint steps,
  counted in a real two-rank run;
- repeated two-rank training and evaluation runs all exit 0 (a rank that leaves its process
  group alive can abort in teardown).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.support.core_fixtures import tiny_config_dict
from tests.support.dist_util import REPO, check, torchrun


class Reduced(Exception):
    pass


def test_control_plane_tensors_live_on_the_rank_device(monkeypatch):
    from frozen_scale.distributed import engine as dist_engine

    seen = []

    def fake_all_reduce(tensor, *args, **kwargs):
        seen.append(tensor.device)
        raise Reduced

    monkeypatch.setattr(dist_engine, "device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist_engine.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist_engine.dist, "get_world_size", lambda *a: 8)
    monkeypatch.setattr(dist_engine.dist, "all_reduce", fake_all_reduce)
    for values in (1.0, [1.0, 2.0, 3.0]):
        with pytest.raises(Reduced):
            dist_engine.all_reduce_sum(values)
    assert seen == [torch.device("meta")] * 2


def test_all_reduce_sum_one_rank_is_identity():
    from frozen_scale.distributed import engine as dist_engine

    assert dist_engine.all_reduce_sum(2.5) == 2.5
    assert dist_engine.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]


def _config(tmp_path, lm, shards, name, **sections):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(lm, shards, tmp_path / name, **sections)))
    return path


def test_one_control_collective_per_step_on_two_ranks(tmp_path, tiny_lm_dir, tiny_shards):
    cfg = _config(tmp_path, tiny_lm_dir, tiny_shards, "count",
                  train={"steps": 6, "log_every": 3, "grad_accum": 2, "micro_batch_size": 2},
                  checkpoint={"every": 0})
    out = tmp_path / "count"
    check(torchrun(2, [str(REPO / "tests" / "support" / "collectives_worker.py"), str(cfg), str(out)]))
    for rank in (0, 1):
        result = json.loads((tmp_path / f"count.rank{rank}.json").read_text())
        assert result["code"] == 0
        per_step = result["per_step"]
        assert len(per_step) == 6
        # steps 1, 2, 4, 5: the stop request only; step 3 adds its log line's one reduction; the
        # last step logs and saves (barriers around the commit)
        assert [per_step[i] for i in (0, 1, 3, 4)] == [1, 1, 1, 1], per_step
        assert per_step[2] == 2, per_step
        assert set(result["calls"]) <= {"all_reduce", "barrier", "all_gather_object", "broadcast_object_list"}


@pytest.mark.slow
def test_repeated_two_rank_train_and_eval_runs_exit_cleanly(tmp_path, tiny_lm_dir, tiny_shards):
    runs = 5
    cfg = _config(tmp_path, tiny_lm_dir, tiny_shards, "repeat",
                  train={"steps": 2, "log_every": 1, "micro_batch_size": 2}, checkpoint={"every": 0},
                  data={"num_workers": 0})
    for i in range(runs):
        check(torchrun(2, ["train", str(cfg), f"train.run_dir={tmp_path / f'run{i}'}"], module="frozen_scale.app.cli"))
    from frozen_scale.train.export import export as export_run

    export = export_run(str(tmp_path / "run0"))
    for i in range(runs):
        proc = torchrun(2, ["eval", str(export), "--task", "vqa", "--num-samples", "6", "--no-progress",
                            "--batch-size", "2", "--out", str(tmp_path / f"eval{i}.json")], module="frozen_scale.app.cli")
        check(proc)
        assert "terminate called" not in proc.stderr
