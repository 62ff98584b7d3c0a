"""The cost of freezing: step time with the LM frozen against the same model with the LM trainable.

    python bench/freeze_savings.py [--quick] [--rounds N] [--steps-per-round S]

Both sides are the Trainer's model and DeepSpeed engine (ZeRO-2, one rank), built from the same
LM folder and seed; the only difference is model.train_lm. Frozen: backward computes activation
gradients through the LM but no weight gradients, and the optimizer holds the vision prefix only.
Trainable: weight gradients for every LM matrix and Adam over all LM parameters. Physical
expectation from FLOPs: (4 N_LM + prefix) / (6 N_LM + prefix) ~ 0.67 per token, before the
optimizer step, which makes the trainable side slower still. Rounds alternate (A B A B); the
ratio is the median of per-round ratios of this process's CPU time, one torch thread (--threads),
with the wall-clock ratio printed too. Each phase (forward, backward, optimizer step) is timed.
Prints the ratio (frozen / trainable) last. Goal: <= 0.70.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import common  # the shared runner; picks the CPU accelerator
from common import (MEDIUM_LM, TINY_LM, add_thread_arg, alternate, loader_batches, machine, median, paired_ratios,
                    quiet_logs, set_threads)

GOAL = 0.70


def stepper(trainer, batches, phases: dict[str, list[float]]):
    """One training step as Trainer.fit takes it, with its phases timed (CPU seconds)."""
    engine = trainer.engine
    state = {"i": 0}

    def step():
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        t0 = time.process_time()
        loss = engine(**batch)
        t1 = time.process_time()
        engine.backward(loss)
        t2 = time.process_time()
        engine.step()
        t3 = time.process_time()
        phases["forward"].append(t1 - t0)
        phases["backward"].append(t2 - t1)
        phases["optimizer"].append(t3 - t2)

    return step


def build(tmp: Path, quick: bool):
    from frozen_scale.train.trainer import Trainer

    lm_dir = common.save_lm(tmp / "lm", **(TINY_LM if quick else MEDIUM_LM))
    shards = common.write_world_shards(tmp / "shards", count=64 if quick else 256, per_shard=64, image_size=16)
    trainers = {}
    for name, train_lm in (("frozen", False), ("trainable", True)):
        cfg = common.run_config(lm_dir, shards, tmp / name, model={"train_lm": train_lm},
                                train={"micro_batch_size": 4 if quick else 8})
        trainers[name] = Trainer(cfg)
        quiet_logs()
        trainers[name].engine.train()
    batches = loader_batches(trainers["frozen"].cfg, trainers["frozen"].tokenizer, 8)
    return trainers, batches


def main(argv=None) -> float:
    import torch

    parser = common.parser(__doc__, "--quick", "tiny LM, few rounds: a smoke run for the tests")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps-per-round", type=int, default=None)
    add_thread_arg(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    rounds = args.rounds or (4 if args.quick else 16)
    per_round = args.steps_per_round or (2 if args.quick else 1)

    with tempfile.TemporaryDirectory(prefix="bench_freeze_savings_") as tmp:
        trainers, batches = build(Path(tmp), args.quick)
        phases = {name: {"forward": [], "backward": [], "optimizer": []} for name in trainers}
        steps = {name: stepper(t, batches, phases[name]) for name, t in trainers.items()}
        times = alternate({name: (lambda fn=fn: [fn() for _ in range(per_round)]) for name, fn in steps.items()},
                          rounds=rounds)
    ratios = paired_ratios(times, "frozen", "trainable", "cpu")
    ratio = median(ratios)
    wall_ratio = median(paired_ratios(times, "frozen", "trainable", "wall"))
    frozen, trainable = trainers["frozen"], trainers["trainable"]
    flop_ratio = frozen.flops.per_token / trainable.flops.per_token
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    print(f"LM parameters: {frozen.param_counts['lm']:,}; trainable: frozen LM {frozen.param_counts['trainable']:,}, "
          f"trainable LM {trainable.param_counts['trainable']:,}; micro-batch {frozen.cfg.train.micro_batch_size}, "
          f"{int(batches[0]['attention_mask'].numel())} token positions per batch")
    print(f"rounds: {rounds} x {per_round} steps each, alternating")
    for name in ("frozen", "trainable"):
        p = phases[name]
        print(f"{name:9s} step median CPU {median(times[name]['cpu']) / per_round * 1e3:7.1f} ms, wall "
              f"{median(times[name]['wall']) / per_round * 1e3:7.1f} ms  (CPU: forward "
              f"{median(p['forward']) * 1e3:.1f}, backward {median(p['backward']) * 1e3:.1f}, optimizer "
              f"{median(p['optimizer']) * 1e3:.1f} ms)")
    fwd_bwd = ((median(phases["frozen"]["forward"]) + median(phases["frozen"]["backward"]))
               / (median(phases["trainable"]["forward"]) + median(phases["trainable"]["backward"])))
    print(f"per-round CPU-time ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"median per-round wall-clock ratio: {wall_ratio:.3f} (noisier: the cores are shared)")
    print(f"FLOP model per token (4N+prefix)/(6N+prefix): {flop_ratio:.3f}; measured forward+backward only: "
          f"{fwd_bwd:.3f}")
    common.report(args, "freeze_savings", ratio, "frozen / trainable, CPU time per step", GOAL,
                  extra={"wall_ratio": wall_ratio, "flop_ratio": flop_ratio})
    return ratio


if __name__ == "__main__":
    common.run_main(main)
