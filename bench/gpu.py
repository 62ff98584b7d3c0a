"""GPU throughput and MFU of the Frozen step: Llama-style LMs of ~1B and ~7B parameters, frozen.

    python bench/gpu.py                     # one H200 (or any CUDA GPU); well under 10 minutes
    python bench/gpu.py --tiny              # tiny sizes on CPU: keeps the script from rotting

For each size: a random-init Llama-style LM (bf16, SDPA attention; built directly on the GPU:
writing 13 GB with save_pretrained and reading it back would eat minutes of the budget and
measures nothing about the step), frozen, in the project's FrozenVLM with a ViT-B/16 prefix at
224 px, stepped by our DeepSpeed engine (ZeRO-2, bf16, one rank) on sequences of --seq positions
(bos, k image slots, text). The micro-batch is found by measuring the memory of batch 1 and 2 and
filling --fill of the GPU (halved on out-of-memory). Prints tokens/s and MFU, with the FLOPs of
frozen_scale.train.flops (4 N_LM per token frozen, 6 N_LM trainable, + prefix and vision; the
attention-score FLOPs are not counted), over the datasheet peak (--peak-tflops, 989 bf16 dense for
an H100/H200) and over a bf16 matmul peak measured at start. The same with the LM trainable for
comparison: at 1B only by default (7B with Adam needs ~16 bytes a parameter, ~107 GB before
activations: --trainable-7b tries it). Prints the frozen MFU of the largest size last.
Goal: MFU >= 60% frozen.
"""

from __future__ import annotations

import gc
import time

import common  # the shared runner; picks the accelerator
from common import machine, quiet_logs

GOAL = 0.60
# name -> (hidden, layers, heads, kv heads, intermediate, vocab)
SIZES = {
    "1b": (2048, 16, 16, 16, 5632, 32000),     # ~1.1B (TinyLlama-like widths, full MHA)
    "7b": (4096, 32, 32, 32, 11008, 32000),    # ~6.7B (Llama-2-7B shape)
    "tiny": (64, 2, 4, 4, 172, 256),
}
VIT_B16 = dict(kind="vit", image_size=224, vit_patch_size=16, vit_dim=768, vit_depth=12, vit_heads=12)
VIT_TINY = dict(kind="vit", image_size=32, vit_patch_size=8, vit_dim=32, vit_depth=1, vit_heads=2)


def llama_config(size: str, seq: int):
    import transformers as tf

    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    return tf.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                          max_position_embeddings=max(4096, seq), bos_token_id=1, eos_token_id=2,
                          pad_token_id=0, tie_word_embeddings=False)


def run_config(args, train_lm: bool, precision: str):
    from frozen_scale.config import FrozenConfig, from_dict

    return from_dict(FrozenConfig, {
        "model": {"prefix_length": 2, "train_lm": train_lm, "attn_implementation": "sdpa",
                  "activation_checkpointing": args.checkpointing, "vision": VIT_TINY if args.tiny else VIT_B16},
        "train": {"micro_batch_size": 1, "precision": precision, "peak_tflops": args.peak_tflops,
                  "lr": 1e-5, "steps": 10**6, "progress": False, "tensorboard": False},
        "deepspeed": {"stage": 2},
    })


def make_batch(batch: int, seq: int, k: int, vocab: int, image_size: int, dev, dtype):
    import torch

    from frozen_scale.data.prompts import IGNORE, IMAGE_TOKEN

    ids = torch.randint(3, vocab, (batch, seq), device=dev)
    ids[:, 0] = 1
    ids[:, 1:1 + k] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, :1 + k] = IGNORE
    return {"pixel_values": torch.randn(batch, 3, image_size, image_size, device=dev, dtype=dtype),
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measured_peak_tflops(dev, dtype) -> float:
    """bf16 (GPU) or fp32 (CPU) matmul throughput: the best this device does on big GEMMs."""
    import torch

    from frozen_scale.train.flops import measured_cpu_peak_tflops

    if dev.type != "cuda":
        return measured_cpu_peak_tflops(n=512, seconds=0.5)
    n = 8192
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        for _ in range(10):
            a @ b
        sync(dev)
        count += 10
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e12


class Bench:
    """One engine for one (size, frozen|trainable) pair."""

    def __init__(self, args, lm, train_lm: bool, dev, dtype, precision: str):
        import torch

        from frozen_scale.distributed import engine as dist_engine
        from frozen_scale.model.frozen_vlm import FrozenVLM, embedding_norm
        from frozen_scale.train.flops import FlopsCounter
        from frozen_scale.train.schedule import warmup_cosine

        self.cfg = cfg = run_config(args, train_lm, precision)
        lm.requires_grad_(train_lm)
        lm.train(train_lm)
        torch.manual_seed(0)
        model = FrozenVLM(cfg.model, lm, lm_embedding_norm=embedding_norm(lm))
        model.vision.to(dtype)
        model.prefix.to(dtype)
        self.counts = model.parameter_counts()
        # Count FLOPs before the engine moves the vision encoder to the device: FlopsCounter probes
        # the encoder with a CPU tensor.
        self.flops = FlopsCounter(model, self.counts, cfg)
        ds = dist_engine.ds_config(cfg, 1)
        self.engine, _ = dist_engine.build_engine(
            model, cfg, ds, warmup_cosine(0, cfg.train.steps, cfg.train.min_lr_ratio))
        self.engine.train()
        self.dev, self.dtype, self.args = dev, dtype, args
        self.vocab = lm.config.vocab_size

    def step(self, batch) -> None:
        loss = self.engine(**batch)
        self.engine.backward(loss)
        self.engine.step()

    def batch(self, size: int):
        return make_batch(size, self.args.seq, self.cfg.model.prefix_length, self.vocab,
                          self.cfg.model.vision.image_size, self.dev, self.dtype)

    def pick_batch(self) -> int:
        """Largest micro-batch filling --fill of the GPU memory (extrapolated from batch 1 and 2)."""
        import torch

        if self.args.batch:
            return self.args.batch
        if self.dev.type != "cuda":
            return 2
        self.step(self.batch(1))  # first step: the optimizer creates its state, not counted below
        peaks = []
        for b in (1, 2):
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.step(self.batch(b))
            sync(self.dev)
            peaks.append(torch.cuda.max_memory_allocated(self.dev))
        per_sample = max(peaks[1] - peaks[0], 1)
        total = torch.cuda.get_device_properties(self.dev).total_memory
        size = int((self.args.fill * total - (peaks[0] - per_sample)) // per_sample)
        return max(1, min(size, self.args.max_batch))

    def timed(self, size: int):
        batch = self.batch(size)
        for _ in range(self.args.warmup):
            self.step(batch)
        sync(self.dev)
        t0 = time.perf_counter()
        steps = 0
        while steps < self.args.min_steps or time.perf_counter() - t0 < self.args.seconds:
            self.step(batch)
            steps += 1
            sync(self.dev)  # so that the time check sees finished steps
        return batch, steps, time.perf_counter() - t0

    def measure(self) -> dict:
        import torch

        size = self.pick_batch()
        while True:
            oom = False
            try:
                batch, steps, seconds = self.timed(size)
            except torch.cuda.OutOfMemoryError:
                oom = True
            if not oom:
                break
            # outside the except block, so the traceback no longer pins the step's tensors
            if size == 1:
                raise RuntimeError("out of memory at micro-batch 1")
            size //= 2
            self.engine.zero_grad()
            gc.collect()
            torch.cuda.empty_cache()
            print(f"  out of memory: retrying with micro-batch {size}", flush=True)
        tokens = int(batch["attention_mask"].sum()) * steps
        images = size * steps
        memory = torch.cuda.max_memory_allocated(self.dev) if self.dev.type == "cuda" else 0
        return {"micro_batch": size, "steps": steps, "seconds": seconds, "tokens_per_s": tokens / seconds,
                "mfu": self.flops.mfu(tokens, images, seconds, 1),
                "achieved_tflops": self.flops.mfu(tokens, images, seconds, 1) * self.flops.peak / 1e12,
                "peak_memory_gib": memory / 2**30}

    def close(self) -> None:
        import torch

        self.engine.destroy() if hasattr(self.engine, "destroy") else None
        del self.engine
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()


def build_lm(size: str, seq: int, dev, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(dev):
        lm = AutoModelForCausalLM.from_config(llama_config(size, seq), dtype=dtype, attn_implementation="sdpa")
    return lm


def main(argv=None) -> float:
    parser = common.parser(__doc__, "--tiny", "tiny LM and ViT on whatever device there is (CPU)")
    parser.add_argument("--sizes", default="1b,7b", help="comma-separated: 1b, 7b")
    parser.add_argument("--seq", type=int, default=None, help="positions per sequence (default 512; tiny 32)")
    parser.add_argument("--batch", type=int, default=0, help="micro-batch (0: fill the GPU)")
    parser.add_argument("--fill", type=float, default=0.80, help="fraction of GPU memory to fill")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 15)")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet peak (bf16 dense H100/H200)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing through the LM")
    parser.add_argument("--trainable-7b", action="store_true", help="also try the 7B LM trainable (Adam)")
    parser.add_argument("--no-trainable", action="store_true", help="frozen only")
    args = parser.parse_args(argv)
    import os

    import torch

    if torch.cuda.is_available():  # before DeepSpeed is imported (`make` exports DS_ACCELERATOR=cpu)
        os.environ["DS_ACCELERATOR"] = "cuda"
    from frozen_scale.distributed import engine as dist_engine

    dist_engine.init_distributed()
    quiet_logs()
    dev = dist_engine.device()
    on_gpu = dev.type == "cuda"
    if not on_gpu and not args.tiny:
        parser.error("no GPU here: run with --tiny (tiny sizes on CPU), or on a machine with a GPU")
    sizes = ["tiny"] if args.tiny else [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.seq = args.seq or (32 if args.tiny else 512)
    args.seconds = args.seconds if args.seconds is not None else (0.0 if args.tiny else 15.0)
    precision = "bf16" if on_gpu else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    measured_peak = measured_peak_tflops(dev, dtype)
    if not on_gpu:
        args.peak_tflops = measured_peak  # no datasheet figure for a CPU
    print(f"machine: {machine()}; device {dev}, {precision}, SDPA attention, seq {args.seq}, "
          f"activation checkpointing {'on' if args.checkpointing else 'off'}")
    print(f"peak: {'datasheet' if on_gpu else 'CPU (measured)'} {args.peak_tflops:.4g} TFLOP/s, measured {precision} "
          f"matmul {measured_peak:.4g} TFLOP/s")

    results = []
    t_start = time.perf_counter()
    for size in sizes:
        lm = build_lm(size, args.seq, dev, dtype)
        n_lm = sum(p.numel() for p in lm.parameters())
        modes = [False]
        if not args.no_trainable and (size != "7b" or args.trainable_7b):
            modes.append(True)
        for train_lm in modes:
            bench = Bench(args, lm, train_lm, dev, dtype, precision)
            try:
                r = bench.measure()
            except RuntimeError as err:  # out of memory even at micro-batch 1
                print(f"{size} {'trainable' if train_lm else 'frozen'}: not measured ({err})", flush=True)
                bench.close()
                continue
            bench.close()
            r.update(size=size, lm_parameters=n_lm, mode="trainable" if train_lm else "frozen",
                     mfu_measured_peak=r["achieved_tflops"] / measured_peak)
            results.append(r)
            print(f"{size:>4} LM {n_lm / 1e6:,.1f}M {r['mode']:>9}: micro-batch {r['micro_batch']:>3}, "
                  f"{r['tokens_per_s']:>10,.0f} tokens/s, {r['achieved_tflops']:7.4g} TFLOP/s, "
                  f"MFU {r['mfu']:.1%} of {'datasheet' if on_gpu else 'CPU'} peak, "
                  f"{r['mfu_measured_peak']:.1%} of measured; "
                  f"peak memory {r['peak_memory_gib']:.1f} GiB ({r['steps']} steps, {r['seconds']:.1f} s)", flush=True)
        del lm
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
    if "7b" in sizes and not args.trainable_7b and not args.no_trainable:
        print("7b trainable: not run (Adam on 6.7B parameters needs ~107 GB before activations; --trainable-7b)")
    print(f"total time {time.perf_counter() - t_start:.0f} s")
    frozen = [r for r in results if r["mode"] == "frozen"]
    if not frozen:
        raise SystemExit("no frozen measurement completed")
    last = frozen[-1]
    if not on_gpu:
        print("(CPU smoke run: the MFU goal applies to the GPU)")
    common.report(args, "gpu", last["mfu"], f"frozen MFU, {last['size']}", GOAL if on_gpu else None, better="higher",
                  extra={"measurements": results, "on_gpu": on_gpu},
                  line=f"gpu frozen MFU ({last['size']}, of {'datasheet' if on_gpu else 'CPU'} peak): {last['mfu']:.3f}")
    return last["mfu"]


if __name__ == "__main__":
    common.run_main(main)  # the process group, if any, destroyed on the way out
