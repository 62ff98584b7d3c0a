"""Loader throughput: our loader against a plain webdataset pipeline on the same shards.

    python bench/loader_throughput.py [--quick] [--rounds N] [--batches B]

Ours: `CaptionStream` through `ResumableBatches` (what the Trainer iterates): tar reading,
shuffle buffer, image decode + resize + normalise, caption tokenisation into the image-slot
layout, collation. Plain: `webdataset.WebDataset(...).shuffle().decode("pil").to_tuple()
.map(transform).batched(collate)` through `wds.WebLoader`, doing the same work: RGB decode,
bicubic resize, normalise, and the same token layout (bos, k image slots, prompt, caption, eos;
loss on the caption) from one batched tokenizer call. A third candidate is our loader with its
collate tokenising a batch's captions in one call (a prototype fix; identical batches). All run
in the main process (num_workers=0) and are compared per CPU-second of this process, which other
work on a shared machine disturbs far less than wall time; the Trainer adds DataLoader workers.
Two shard sets: the demo's (32 px PNG, used at 32 px) and web-like (256 px JPEG, used at
224 px). Rounds alternate; each round builds a fresh pipeline and takes B batches. Then the
Trainer's own figure: the demo's run config (configs/tiny-cpu.yaml, two CPU ranks, its LM shape
with random weights, its image size) trains --demo-steps steps and its metrics.jsonl gives
data_wait_fraction per logged window (goal < 5% in the demo; the first window also holds the
DataLoader workers' start and the shuffle buffer's first fill, so the windows after it are
reported apart). Prints the ratio (ours / plain samples per CPU-second, the lower of the two
shard sets) last. Goal: >= 1.0.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common  # the shared runner; picks the CPU accelerator
from common import add_thread_arg, alternate, machine, median, paired_ratios, set_threads

GOAL = 1.0
MEAN = STD = (0.5, 0.5, 0.5)
PROMPT = "caption :"
REPO_CONFIG = common.REPO / "configs" / "tiny-cpu.yaml"
WAIT_GOAL = 0.05
K = 2
MAX_TEXT = 24


def ours_pipeline(shard_dir: Path, tokenizer, image_size: int, batch_size: int, buffer: int):
    from frozen_scale.data.loader import CaptionStream, ResumableBatches
    from frozen_scale.data.shards import list_shards

    stream = CaptionStream(list_shards(str(shard_dir)), tokenizer, k=K, image_size=image_size,
                           batch_size=batch_size, seed=0, rank=0, world_size=1, shuffle_buffer=buffer,
                           prompt=PROMPT, max_text_len=MAX_TEXT, mean=MEAN, std=STD)
    return ResumableBatches(stream, 0)


def batched_tokenization_pipeline(shard_dir: Path, tokenizer, image_size: int, batch_size: int, buffer: int):
    """Our loader with one change in collate: the prompt is laid out once and a batch's captions
    are tokenised in one call. A prototype of a fix for frozen_scale/data/loader.py, measured
    beside the real loader; its batches are identical (checked in `compare`)."""
    from frozen_scale.data.loader import ResumableBatches
    from frozen_scale.data.shards import list_shards

    stream = BatchedTokenizationStream(list_shards(str(shard_dir)), tokenizer, k=K, image_size=image_size,
                                       batch_size=batch_size, seed=0, rank=0, world_size=1,
                                       shuffle_buffer=buffer, prompt=PROMPT, max_text_len=MAX_TEXT,
                                       mean=MEAN, std=STD)
    return ResumableBatches(stream, 0)


def _batched_tokenization_stream_class():
    from frozen_scale.data import prompts
    from frozen_scale.data.loader import CaptionStream

    class Stream(CaptionStream):
        def collate(self, items):
            import torch

            if not hasattr(self, "_head"):
                segments = [prompts.Image()] + ([prompts.Text(self.prompt)] if self.prompt else [])
                self._head = prompts.encode(segments, self.tokenizer, self.k)
            head, eos = self._head, self.tokenizer.eos_token_id
            captions = [" " + cap if self.prompt else cap for _, cap, _ in items]
            encoded = []
            for toks in self.tokenizer(captions, add_special_tokens=False)["input_ids"]:
                toks = (toks + [eos] if eos is not None else toks)[: self.max_text_len]
                encoded.append(prompts.Encoded(head.input_ids + toks, head.labels + toks, 1))
            batch = prompts.pad_batch(encoded, self.tokenizer.pad_token_id)
            batch["pixel_values"] = torch.stack([img for img, _, _ in items])
            batch["captions"] = [cap for _, cap, _ in items]
            batch["keys"] = [key for _, _, key in items]
            return batch

    return Stream


class _Lazy:
    def __call__(self, *args, **kwargs):
        return _batched_tokenization_stream_class()(*args, **kwargs)


BatchedTokenizationStream = _Lazy()


def plain_pipeline(shard_dir: Path, tokenizer, image_size: int, batch_size: int, buffer: int):
    """The pipeline a webdataset user writes by hand."""
    import numpy as np
    import torch
    import webdataset as wds
    from PIL import Image

    from frozen_scale.data.prompts import IGNORE, IMAGE_TOKEN

    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    prompt_ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    head = [tokenizer.bos_token_id] + [IMAGE_TOKEN] * K + prompt_ids

    def transform(sample):
        img, caption = sample
        img = img.convert("RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        return (x - mean) / std, caption.strip()

    def collate(samples):
        images, captions = zip(*samples)
        caption_ids = tokenizer([" " + c for c in captions], add_special_tokens=False)["input_ids"]
        rows = [head + (ids + [tokenizer.eos_token_id])[:MAX_TEXT] for ids in caption_ids]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            labels[i, len(head): len(row)] = torch.tensor(row[len(head):])
            mask[i, : len(row)] = 1
        return {"pixel_values": torch.stack(images), "input_ids": input_ids, "attention_mask": mask,
                "labels": labels}

    dataset = (wds.WebDataset(urls, shardshuffle=False, repeat=True, empty_check=False)
               .shuffle(buffer).decode("pil").to_tuple("png;jpg", "txt").map(transform)
               .batched(batch_size, collation_fn=collate, partial=False))
    return iter(wds.WebLoader(dataset, batch_size=None, num_workers=0))  # as a trainer would iterate it


def compare(name: str, shard_dir: Path, tokenizer, image_size: int, batch_size: int, buffer: int,
            batches: int, rounds: int) -> float:
    import torch

    # the two pipelines produce the same layout (checked on the first batch of each)
    a = next(ours_pipeline(shard_dir, tokenizer, image_size, batch_size, buffer))
    b = next(plain_pipeline(shard_dir, tokenizer, image_size, batch_size, buffer))
    for key in ("pixel_values", "input_ids", "attention_mask", "labels"):
        assert a[key].dtype == b[key].dtype and a[key].shape[0] == b[key].shape[0], key
    assert a["pixel_values"].shape == b["pixel_values"].shape

    # the prototype collate gives exactly the real loader's batches
    c = next(batched_tokenization_pipeline(shard_dir, tokenizer, image_size, batch_size, buffer))
    assert a["keys"] == c["keys"]
    for key in ("pixel_values", "input_ids", "attention_mask", "labels"):
        assert torch.equal(a[key], c[key]), key

    def run(make):
        def once():
            it = make(shard_dir, tokenizer, image_size, batch_size, buffer)
            for _ in range(batches):
                next(it)
        return once

    times = alternate({"ours": run(ours_pipeline), "plain": run(plain_pipeline),
                       "batched": run(batched_tokenization_pipeline)}, rounds=rounds, warmup=0)
    samples = batches * batch_size
    ratios = [1 / r for r in paired_ratios(times, "ours", "plain", "cpu")]  # samples/s ours / plain
    ratio = median(ratios)
    wall = median([1 / r for r in paired_ratios(times, "ours", "plain", "wall")])
    print(f"[{name}] samples per CPU-second: ours {samples / median(times['ours']['cpu']):6.0f}, plain webdataset "
          f"{samples / median(times['plain']['cpu']):6.0f}; ratio {ratio:.3f} (per-round: "
          f"{' '.join(f'{r:.2f}' for r in ratios)}); wall-clock samples/s ours "
          f"{samples / median(times['ours']['wall']):.0f}, plain {samples / median(times['plain']['wall']):.0f}, "
          f"ratio {wall:.3f}")
    proto = median([1 / r for r in paired_ratios(times, "batched", "plain", "cpu")])
    print(f"[{name}] prototype fix (batched caption tokenisation in collate): "
          f"{samples / median(times['batched']['cpu']):.0f} samples per CPU-second, ratio to plain {proto:.3f}")
    return ratio


def demo_data_wait(tmp: Path, steps: int, log_every: int, samples: int) -> list[float]:
    """data_wait_fraction of each logged window of a short run with the demo's config on 2 ranks."""
    from frozen_scale.config import load_config
    from launchers.local import launch_training
    from frozen_scale.train.metrics import read_metrics

    config = REPO_CONFIG
    cfg = load_config(config)
    pc = cfg.lm_pretrain
    lm_dir = common.save_lm(tmp / "demo_lm", arch=pc.arch, n_layer=pc.n_layer, n_embd=pc.n_embd, n_head=pc.n_head)
    shards = common.write_world_shards(tmp / "demo_train", count=samples, per_shard=samples // 4,
                                       image_size=cfg.model.vision.image_size)
    run_dir = tmp / "demo_run"
    code = launch_training(config, 2, [
        f"model.lm_path={lm_dir}", f"data.train_shards={shards}", f"train.run_dir={run_dir}",
        f"train.steps={steps}", f"train.log_every={log_every}", "train.warmup_steps=0", "checkpoint.every=0",
        "train.progress=false", "train.tensorboard=false",
    ], env={"PYTHONPATH": str(common.REPO)})
    if code != 0:
        raise RuntimeError(f"demo-config training exited {code}")
    return [r["data_wait_fraction"] for r in read_metrics(str(run_dir))]


def main(argv=None) -> float:
    parser = common.parser(__doc__, "--quick", "few samples, few rounds: a smoke run for the tests")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="batches per round")
    parser.add_argument("--demo-steps", type=int, default=None, help="steps of the demo-config run (0: skip)")
    add_thread_arg(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from frozen_scale.world import text

    rounds = args.rounds or (2 if args.quick else 8)
    batch_size, buffer = (8, 16) if args.quick else (32, 256)
    n_batches = args.batches or (4 if args.quick else 16)
    tokenizer = text.build_tokenizer()
    print(f"machine: {machine()}")
    print(f"batch {batch_size}, shuffle buffer {buffer}, {n_batches} batches per round, {rounds} rounds "
          f"alternating, main process only")
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        count = 64 if args.quick else 1024
        demo = common.write_world_shards(Path(tmp) / "demo", count=count, per_shard=count // 4, image_size=32)
        web = common.write_world_shards(Path(tmp) / "web", count=count // 2, per_shard=count // 8,
                                        image_size=256, image_format="jpeg")
        r_demo = compare("demo shards, 32 px PNG -> 32", demo, tokenizer, 32, batch_size, buffer, n_batches, rounds)
        r_web = compare("web-like shards, 256 px JPEG -> 224", web, tokenizer, 224, batch_size, buffer // 2,
                        max(2, n_batches // 2), rounds)
        demo_steps = args.demo_steps if args.demo_steps is not None else (4 if args.quick else 60)
        waits = (demo_data_wait(Path(tmp), demo_steps, max(1, demo_steps // 6), 256 if args.quick else 2048)
                 if demo_steps else [])
    if waits:
        steady = median(waits[1:]) if len(waits) > 1 else waits[0]
        print(f"trainer data_wait_fraction, demo config on 2 ranks, {demo_steps} steps, per window: "
              f"{' '.join(f'{w:.3f}' for w in waits)}; steady state (after the first window) median "
              f"{steady:.3f}; goal < {WAIT_GOAL}: {'met' if steady < WAIT_GOAL else 'NOT met'}")
    ratio = min(r_demo, r_web)
    common.report(args, "loader_throughput", ratio, "ours / plain webdataset samples per CPU-second, lower of the two",
                  GOAL, better="higher", extra={"demo_ratio": r_demo, "web_ratio": r_web, "data_wait": waits})
    return ratio


if __name__ == "__main__":
    main()
