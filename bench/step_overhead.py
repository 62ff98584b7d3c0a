"""Engine overhead: our training step against a hand-written PyTorch loop doing the same math.

    python bench/step_overhead.py [--quick] [--rounds N] [--steps-per-round S]

Ours: the Trainer's model and DeepSpeed engine (ZeRO-2, one rank) stepping as `Trainer.fit`
does (engine forward, backward, step). Baseline: the same FrozenVLM (same LM folder, same seed,
so the same initial weights), `torch.optim.AdamW` over the same trainable parameters in the same
groups, the same gradient clipping and LR schedule, `loss.backward()`, `optimizer.step()`. Both
consume the same batches (made once by our loader, held in memory) in the same order; rounds
alternate between the two (A B A B) and the ratio is the median of per-round ratios of this
process's CPU time, one torch thread (--threads): on a shared machine wall time swings with other
jobs, CPU time much less; the wall-clock ratio is printed too. Both losses are printed: the two
loops do the same math, so they track each other.
Prints the ratio (ours / hand-written) last. Goal: <= 1.05.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common  # the shared runner; picks the CPU accelerator
from common import (MEDIUM_LM, TINY_LM, add_thread_arg, alternate, loader_batches, machine, median, paired_ratios,
                    quiet_logs, set_threads)

GOAL = 1.05


def build(tmp: Path, quick: bool):
    import torch

    from frozen_scale.model import lm as lm_lib
    from frozen_scale.model.frozen_vlm import FrozenVLM, embedding_norm
    from frozen_scale.train.schedule import warmup_cosine
    from frozen_scale.train.trainer import Trainer

    lm_spec = TINY_LM if quick else MEDIUM_LM
    lm_dir = common.save_lm(tmp / "lm", **lm_spec)
    shards = common.write_world_shards(tmp / "shards", count=64 if quick else 256, per_shard=64, image_size=16)
    cfg = common.run_config(lm_dir, shards, tmp / "run", deepspeed={"stage": 2},
                            train={"micro_batch_size": 4 if quick else 8})
    trainer = Trainer(cfg)
    quiet_logs()
    trainer.engine.train()

    # the hand-written loop: same construction order as Trainer._build_model, no DeepSpeed
    lm = lm_lib.load_lm(str(lm_dir), attn_implementation=cfg.model.attn_implementation)
    norm = embedding_norm(lm)
    torch.manual_seed(cfg.train.seed)
    plain = FrozenVLM(cfg.model, lm, lm_embedding_norm=norm).train()
    trainable = [p for p in plain.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.lr, betas=tuple(cfg.train.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio))
    for a, b in zip(trainer.engine.module.parameters(), plain.parameters()):
        assert torch.equal(a.detach(), b.detach()), "the two models must start from the same weights"

    batches = loader_batches(cfg, trainer.tokenizer, 8)
    state = {"ours": 0, "plain": 0}
    losses = {"ours": [], "plain": []}

    def ours():
        batch = batches[state["ours"] % len(batches)]
        state["ours"] += 1
        loss = trainer.engine(**batch)
        trainer.engine.backward(loss)
        trainer.engine.step()
        losses["ours"].append(float(loss.detach()))

    def hand_written():
        batch = batches[state["plain"] % len(batches)]
        state["plain"] += 1
        loss = plain(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses["plain"].append(float(loss.detach()))

    counts = trainer.param_counts
    info = {"lm_parameters": counts["lm"], "trainable_parameters": counts["trainable"],
            "micro_batch": cfg.train.micro_batch_size,
            "tokens_per_batch": int(batches[0]["attention_mask"].numel())}
    return ours, hand_written, losses, info


def main(argv=None) -> float:
    import torch

    parser = common.parser(__doc__, "--quick", "tiny LM, few rounds: a smoke run for the tests")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps-per-round", type=int, default=None)
    add_thread_arg(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    rounds = args.rounds or (4 if args.quick else 40)
    per_round = args.steps_per_round or (2 if args.quick else 1)

    with tempfile.TemporaryDirectory(prefix="bench_step_overhead_") as tmp:
        ours, hand_written, losses, info = build(Path(tmp), args.quick)

        def repeat(fn):
            return lambda: [fn() for _ in range(per_round)]

        times = alternate({"ours": repeat(ours), "plain": repeat(hand_written)}, rounds=rounds)
    ratios = paired_ratios(times, "ours", "plain", "cpu")
    ratio = median(ratios)
    wall_ratio = median(paired_ratios(times, "ours", "plain", "wall"))
    n = len(losses["ours"])
    drift = max(abs(a - b) for a, b in zip(losses["ours"], losses["plain"]))
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    print(f"LM parameters: {info['lm_parameters']:,} (frozen); trainable: {info['trainable_parameters']:,}; "
          f"micro-batch {info['micro_batch']}, {info['tokens_per_batch']} token positions per batch")
    print(f"rounds: {rounds} x {per_round} steps each, alternating; {n} steps per loop")
    for name, label in (("ours", "ours (DeepSpeed ZeRO-2, 1 rank)"), ("plain", "hand-written PyTorch")):
        print(f"step time {label:32s} median CPU {median(times[name]['cpu']) / per_round * 1e3:7.1f} ms, "
              f"wall {median(times[name]['wall']) / per_round * 1e3:7.1f} ms")
    print(f"per-round CPU-time ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"median per-round wall-clock ratio: {wall_ratio:.3f} (noisier: the cores are shared)")
    print(f"loss first/last ours {losses['ours'][0]:.4f}/{losses['ours'][-1]:.4f}, hand-written "
          f"{losses['plain'][0]:.4f}/{losses['plain'][-1]:.4f}; largest per-step difference {drift:.2e}")
    common.report(args, "step_overhead", ratio, "ours / hand-written, CPU time per step", GOAL,
                  extra={"wall_ratio": wall_ratio, "loss_drift": drift})
    return ratio


if __name__ == "__main__":
    common.run_main(main)
