"""Memory per rank under ZeRO-3: LM parameter bytes and optimizer-state bytes, 2 ranks against 1.

    python bench/zero3_memory.py [--quick]

The script launches itself under torchrun twice (1 rank, then 2 CPU ranks over gloo). Each rank
builds the real Trainer (ZeRO-3: the LM is loaded already partitioned), takes one training step
(Adam creates its state on the first step), and writes per-rank JSON:
- LM partition bytes: the ZeRO-3 partition this rank owns (`ds_tensor`);
- LM resident bytes: the partition plus any LM parameter held whole on this rank after the step
  (ZeRO-3 keeps parameters below `stage3_param_persistence_threshold` whole on every rank);
- optimizer-state bytes (Adam's moments, `optimizer_state_bytes`), compared with Adam's
  2 x 4 bytes per trainable element, and the LM's share of them;
- the process's peak RSS, for context.
Full size uses the persistence threshold a run derives from the LM (frozen_scale.distributed.zero3);
--quick sets it to 0 outright (its tiny LM's matrices would fall below DeepSpeed's 1e5 default).
Prints the ratio (largest per-rank LM resident bytes with 2 ranks / with 1 rank) last. Goal: <= 0.52.
"""

from __future__ import annotations

import json
import resource
import tempfile
from pathlib import Path

import common  # the shared runner; picks the CPU accelerator
from common import MEDIUM_LM, TINY_LM, loader_batches, machine, quiet_logs, torchrun

GOAL = 0.52
ADAM_BYTES_PER_ELEMENT = 2 * 4  # exp_avg + exp_avg_sq, fp32


def worker(args) -> None:
    """One rank: build the Trainer, take a step, measure, write JSON."""
    from frozen_scale.config import load_config
    from frozen_scale.distributed import engine as dist_engine
    from frozen_scale.train.trainer import Trainer

    cfg = load_config(args.config)
    trainer = Trainer(cfg)
    quiet_logs()
    engine, model = trainer.engine, trainer.engine.module
    batch = loader_batches(cfg, trainer.tokenizer, 1)[0]
    engine.train()
    loss = engine(**batch)
    engine.backward(loss)
    engine.step()

    lm_params = list(model.lm.parameters())
    partition = sum(dist_engine.local_numel(p) * p.element_size() for p in lm_params)
    whole_held = sum(p.data.numel() * p.element_size() for p in lm_params
                     if hasattr(p, "ds_tensor") and p.data.numel() and p.data.data_ptr() != p.ds_tensor.data_ptr())
    lm_total = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in lm_params)
    opt_ids = dist_engine.optimizer_param_ids(trainer.optimizer)
    result = {
        "rank": trainer.rank, "world_size": trainer.world_size,
        "lm_total_bytes": lm_total, "lm_partition_bytes": partition, "lm_resident_bytes": partition + whole_held,
        "lm_whole_params_held": sum(1 for p in lm_params if p.data.numel() > 0),
        "lm_params": len(lm_params),
        "trainable_numel": trainer.param_counts["trainable"],
        "lm_trainable_numel": trainer.param_counts["lm_trainable"],
        "lm_params_in_optimizer": sum(id(p) in opt_ids for p in lm_params),
        "optimizer_state_bytes": dist_engine.optimizer_state_bytes(trainer.optimizer),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "loss": float(loss),
    }
    Path(f"{args.out}.rank{trainer.rank}.json").write_text(json.dumps(result))
    dist_engine.shutdown()


def measure(tmp: Path, quick: bool) -> dict[int, list[dict]]:
    import yaml

    from frozen_scale.config import to_dict

    lm_dir = common.save_lm(tmp / "lm", **(TINY_LM if quick else MEDIUM_LM))
    shards = common.write_world_shards(tmp / "shards", count=64, per_shard=32, image_size=16)
    zero = {"stage3_param_persistence_threshold": 0} if quick else {}
    results = {}
    for nproc in (1, 2):
        cfg = common.run_config(lm_dir, shards, tmp / f"run{nproc}",
                                deepspeed={"stage": 3, "extra": {"zero_optimization": zero}},
                                train={"micro_batch_size": 4})
        path = tmp / f"zero3_{nproc}.yaml"
        path.write_text(yaml.safe_dump(to_dict(cfg)))
        out = tmp / f"result{nproc}"
        torchrun(nproc, Path(__file__).resolve(), ["--worker", "--config", str(path), "--out", str(out)])
        results[nproc] = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(nproc)]
    return results


def main(argv=None) -> float:
    parser = common.parser(__doc__, "--quick", "tiny LM: a smoke run for the tests")
    common.add_worker_args(parser)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0.0

    with tempfile.TemporaryDirectory(prefix="bench_zero3_memory_") as tmp:
        results = measure(Path(tmp), args.quick)
    one, two = results[1][0], results[2]
    trainable = one["trainable_numel"]
    adam = ADAM_BYTES_PER_ELEMENT * trainable
    print(f"machine: {machine()}")
    print(f"LM: {one['lm_total_bytes']:,} bytes ({one['lm_params']} tensors); trainable elements {trainable:,} "
          f"(LM trainable {one['lm_trainable_numel']})")
    print(f"{'ranks':>5} {'rank':>4} {'LM partition B':>15} {'LM resident B':>14} {'whole LM tensors':>16} "
          f"{'optimizer B':>12} {'LM in opt':>9} {'peak RSS MiB':>12}")
    for nproc in (1, 2):
        for r in results[nproc]:
            print(f"{nproc:>5} {r['rank']:>4} {r['lm_partition_bytes']:>15,} {r['lm_resident_bytes']:>14,} "
                  f"{r['lm_whole_params_held']:>16} {r['optimizer_state_bytes']:>12,} {r['lm_params_in_optimizer']:>9} "
                  f"{r['peak_rss_bytes'] / 2**20:>12.0f}")
    opt_one = one["optimizer_state_bytes"]
    opt_two = sum(r["optimizer_state_bytes"] for r in two)
    opt_two_max = max(r["optimizer_state_bytes"] for r in two)
    print(f"Adam for the trainable parameters: 2 x 4 B x {trainable:,} = {adam:,} B; measured 1 rank {opt_one:,} B, "
          f"2 ranks {opt_two:,} B in all ({opt_two_max:,} B on the larger rank; ZeRO pads partitions to "
          f"an alignment)")
    opt_ok = (adam <= opt_one <= adam * 1.01 + 1024 and adam <= opt_two <= adam * 1.01 + 1024
              and one["lm_trainable_numel"] == 0
              and all(r["lm_params_in_optimizer"] == 0 for rs in results.values() for r in rs))
    print(f"optimizer state = Adam's for the trainable parameters, none for the LM: {'yes' if opt_ok else 'NO'}")
    partition_ratio = max(r["lm_partition_bytes"] for r in two) / one["lm_partition_bytes"]
    ratio = max(r["lm_resident_bytes"] for r in two) / one["lm_resident_bytes"]
    print(f"LM partition bytes per rank, 2 ranks / 1 rank: {partition_ratio:.4f}")
    common.report(args, "zero3_memory", ratio, "LM resident bytes per rank, 2 ranks / 1 rank", GOAL, digits=4,
                  extra={"partition_ratio": partition_ratio, "adam_state_trainable_only": bool(opt_ok)})
    return ratio


if __name__ == "__main__":
    main()
