"""One GPU acceptance run: the real Trainer on CUDA at ZeRO 0, 2 and 3 (one rank each), bf16, a
1.03B-parameter Llama-shaped LM; a few steps each, export, a caption eval, and the MFU figure.

    python bench/gpu_acceptance.py          # one CUDA GPU (sized for one H200: ~5-7 minutes)
    python bench/gpu_acceptance.py --tiny   # a tiny LM on the CPU: keeps the script from rotting

Not yet run on a GPU: no accelerator was available when it was written; only --tiny has run.

What it does, all in a temporary folder: builds the LM of bench/big_lm.py (20 layers, hidden
2048, the world's tokenizer; random init, bf16, saved as 3 safetensors shards) and world shards;
then for stage 0, 2 and 3 launches `Trainer(cfg).fit()` under torchrun with one rank
(data.num_workers=2, micro-batch --batch, --steps steps, a checkpoint at the end) and reads back
its metrics (loss, tokens/s, MFU over the datasheet peak --peak-tflops, from the trainer's own
FlopsCounter), the allocator's peak (torch.cuda.max_memory_allocated) and `frozen-scale plan`'s
figure for it (CUDA context excluded, as the allocator's peak excludes it); then exports the
ZeRO-3 run's prefix (`frozen-scale export`), loads it next to the LM with
`FrozenVLM.from_pretrained` and runs the world's caption eval (exact match and attribute
accuracy, with the blind baseline; the prefix has trained a few steps on a random LM, so the
scores only show the path works). Checks that the three stages start from the same loss (same
seed, same data, same weights). The last line is `gpu_acceptance mfu (zero3): <x>`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import common  # the shared runner; picks the accelerator
from big_lm import BIG, TINY, build_lm
from common import machine, torchrun

STAGES = (0, 2, 3)
DATASHEET_TFLOPS = 989.0  # bf16 dense, H100/H200
VISION_GPU = dict(kind="resnet", image_size=64, resnet_widths=[32, 64, 128])
VISION_TINY = dict(kind="resnet", image_size=16, resnet_widths=[8, 16])


def worker(args) -> None:
    """One rank: the Trainer's own loop, then the allocator's peak and the run's metrics."""
    import torch

    from frozen_scale.config import load_config
    from frozen_scale.train.metrics import read_metrics
    from frozen_scale.train.trainer import Trainer

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    startup = time.perf_counter() - t0
    code = trainer.fit()
    on_gpu = torch.cuda.is_available()
    result = {"exit": code, "startup_s": startup, "fit_s": time.perf_counter() - t0 - startup,
              "metrics": read_metrics(cfg.train.run_dir) if trainer.is_main else [],
              "max_memory_allocated": torch.cuda.max_memory_allocated() if on_gpu else 0,
              "device": str(trainer.device)}
    if trainer.is_main:
        Path(args.out).write_text(json.dumps(result))


def plan_bytes(cfg, stage: int) -> float:
    """The plan's per-GPU figure without the CUDA context (what the allocator's peak counts)."""
    from launchers import plan

    inputs = plan.plan_inputs(cfg, gpus=1)
    est = plan.estimate(inputs, stage, cfg.train.micro_batch_size, cfg.model.activation_checkpointing)
    return est.total - plan.CUDA_CONTEXT_BYTES


def caption_eval(export_dir: str, cfg, on_gpu: bool, n: int) -> dict:
    import torch

    from frozen_scale.world.evaluation import caption_eval as world_caption_eval
    from frozen_scale.model.frozen_vlm import FrozenVLM
    from frozen_scale.model.lm import load_tokenizer

    model = FrozenVLM.from_pretrained(export_dir, dtype=torch.bfloat16)
    model.vision.to(torch.bfloat16)  # as in training: the whole model in bf16
    model.prefix.to(torch.bfloat16)
    if on_gpu:
        model.to("cuda")
    tokenizer = load_tokenizer(str(Path(export_dir) / "tokenizer"))
    return world_caption_eval(model, tokenizer, seed=cfg.world.seed, split="eval", n=n, prompt=cfg.data.prompt,
                              max_new_tokens=16, batch_size=32, progress=False)


def main(argv=None) -> float:
    parser = common.parser(__doc__, "--tiny", "tiny LM on the CPU (a smoke run for the tests)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per stage (default 30; tiny 4)")
    parser.add_argument("--batch", type=int, default=None, help="micro-batch (default 64; tiny 4)")
    parser.add_argument("--eval-samples", type=int, default=None, help="caption eval images (default 128; tiny 8)")
    parser.add_argument("--peak-tflops", type=float, default=DATASHEET_TFLOPS)
    common.add_worker_args(parser)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0.0
    import torch

    on_gpu = torch.cuda.is_available()
    if on_gpu:  # before DeepSpeed is imported anywhere (`make` exports DS_ACCELERATOR=cpu)
        os.environ["DS_ACCELERATOR"] = "cuda"
    elif not args.tiny:
        parser.error("no GPU here: run with --tiny (tiny LM on the CPU), or on a machine with a GPU")
    steps = args.steps or (4 if args.tiny else 30)
    batch = args.batch or (4 if args.tiny else 64)
    n_eval = args.eval_samples or (8 if args.tiny else 128)
    import yaml

    from frozen_scale.config import to_dict
    from frozen_scale.train.export import export

    t_start = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_acceptance_") as tmp:
        tmp = Path(tmp)
        lm_dir = build_lm(tmp / "lm", TINY if args.tiny else BIG)
        vision = VISION_TINY if args.tiny else VISION_GPU
        shards = common.write_world_shards(tmp / "shards", count=512 if not args.tiny else 64, per_shard=128,
                                           image_size=vision["image_size"])
        print(f"LM and shards ready in {time.perf_counter() - t_start:.0f} s", flush=True)
        results, cfgs = {}, {}
        for stage in STAGES:
            run_dir = tmp / f"run_zero{stage}"
            cfg = common.run_config(
                lm_dir, shards, run_dir,
                model={"vision": vision},
                data={"num_workers": 2, "max_text_len": 16},
                train={"steps": steps, "micro_batch_size": batch, "precision": "bf16", "log_every": max(1, steps // 2),
                       "lr": 1e-4, "peak_tflops": args.peak_tflops if on_gpu else 0.0},
                deepspeed={"stage": stage})
            path = tmp / f"zero{stage}.yaml"
            path.write_text(yaml.safe_dump(to_dict(cfg)))
            out = tmp / f"zero{stage}.json"
            t0 = time.perf_counter()
            torchrun(1, Path(__file__).resolve(), ["--worker", "--config", str(path), "--out", str(out)],
                     timeout=1800, env={"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))})
            results[stage] = r = json.loads(out.read_text())
            cfgs[stage] = cfg
            last = r["metrics"][-1]
            first = r["metrics"][0]
            plan_gib = plan_bytes(cfg, stage) / 2**30
            mem = (f"allocator peak {r['max_memory_allocated'] / 2**30:.3f} GiB, plan {plan_gib:.3f} GiB"
                   if on_gpu else f"plan {plan_gib:.3f} GiB (no allocator figure on the CPU)")
            print(f"ZeRO-{stage}: exit {r['exit']}, {r['device']}, start-up {r['startup_s']:.1f} s, {steps} steps "
                  f"in {r['fit_s']:.1f} s; loss {first['loss']:.4f} (first window) -> {last['loss']:.4f}; "
                  f"{last['tokens_per_s']:,.0f} tokens/s, MFU {last['mfu']:.1%} of "
                  f"{'datasheet' if on_gpu else 'measured CPU'} peak; {mem}; run {time.perf_counter() - t0:.0f} s",
                  flush=True)
            if r["exit"] != 0:
                raise SystemExit(f"ZeRO-{stage} run exited {r['exit']}")
        first_losses = [results[s]["metrics"][0]["loss"] for s in STAGES]
        spread = max(first_losses) - min(first_losses)
        print(f"first-window loss across stages 0/2/3: {', '.join(f'{x:.5f}' for x in first_losses)} "
              f"(spread {spread:.2e}: same seed, data and weights)")
        t0 = time.perf_counter()
        export_dir = export(str(tmp / "run_zero3"))
        scores = caption_eval(export_dir, cfgs[3], on_gpu, n_eval)
        print(f"export + caption eval ({n_eval} images) in {time.perf_counter() - t0:.0f} s: exact match "
              f"{scores['caption_exact_match']:.3f} (blind {scores['caption_exact_match_blind']:.3f}), attribute "
              f"accuracy {scores['caption_attribute_accuracy']:.3f} "
              f"(blind {scores['caption_attribute_accuracy_blind']:.3f}); e.g. "
              f"{scores['caption_examples'][0]['prediction']!r} for {scores['caption_examples'][0]['reference']!r}")
    print(f"total time {time.perf_counter() - t_start:.0f} s")
    mfu = results[3]["metrics"][-1]["mfu"]
    common.report(args, "gpu_acceptance", mfu, "ZeRO-3 MFU", extra={"on_gpu": on_gpu},
                  line=f"gpu_acceptance mfu (zero3, {'datasheet' if on_gpu else 'measured CPU'} peak): {mfu:.4f}")
    return mfu


if __name__ == "__main__":
    common.run_main(main)  # the process group, if any, destroyed on the way out
