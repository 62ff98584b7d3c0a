"""Shared pieces of the benchmarks: the runner every script uses (`parser`: its arguments,
`report`: the goal, the figure printed last and its JSON result), a locally saved LM, world
shards, a run config, batches from our own loader, and side-by-side timing (alternating
candidates, medians).

Each benchmark writes its result as data, `bench/results/<name>.json` (figure, goal, whether it
was met, machine, date, arguments), and prints the figure as its last line. A smoke run
(`--quick`, `--tiny`) writes its JSON only where `--results-dir` says (the tests' temp folders),
never over a measured result.

Everything is built in a temporary folder by the benchmark itself (save_pretrained, TarWriter);
nothing is downloaded. Timings on a shared machine are noisy: candidates are always measured in
the same process, alternating, and compared by their medians.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import frozen_scale.world  # noqa: F401  (registers the built-in world's config sections, as the command does)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the CPU benchmarks; bench/gpu.py picks CUDA itself

# A Llama-style LM of ~25M parameters (the world's 39-token vocabulary makes the embeddings tiny,
# so nearly all of it is transformer blocks: the part whose cost freezing changes).
MEDIUM_LM = dict(arch="llama", n_layer=6, n_embd=512, n_head=8)
TINY_LM = dict(arch="llama", n_layer=2, n_embd=64, n_head=4)


def save_lm(out: Path, arch: str, n_layer: int, n_embd: int, n_head: int, n_positions: int = 256,
            seed: int = 0) -> Path:
    """A random-init causal LM with the world's tokenizer, written with save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    from frozen_scale.world import text
    from frozen_scale.world.pretrain_lm import tiny_lm_config

    tok = text.build_tokenizer()
    cfg = tiny_lm_config(arch, len(tok), n_layer, n_embd, n_head, n_positions,
                         tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def write_world_shards(out: Path, count: int, per_shard: int, image_size: int, image_format: str = "png",
                       seed: int = 0) -> Path:
    """Shards of the built-in world, plus a manifest: data_prep's world shard writer, in this process."""
    from frozen_scale.world.shards import write_world_shards as write

    write(str(out), seed=seed, split="train", count=count, samples_per_shard=per_shard, image_size=image_size,
          image_format=image_format, num_workers=0)
    return out


def run_config(lm_dir: Path, shards: Path, run_dir: Path, **sections):
    """A validated FrozenConfig for a benchmark run (no progress bar, no TensorBoard)."""
    from frozen_scale.config import FrozenConfig, from_dict

    data = {
        "model": {"lm_path": str(lm_dir), "prefix_length": 2,
                  "vision": {"kind": "resnet", "image_size": 16, "resnet_widths": [16, 32]}},
        "data": {"train_shards": str(shards), "num_workers": 0, "shuffle_buffer": 64, "max_text_len": 24,
                 "prompt": "caption :"},
        "train": {"run_dir": str(run_dir), "steps": 10**6, "micro_batch_size": 8, "lr": 1e-4,
                  "log_every": 10**6, "progress": False, "tensorboard": False},
        "deepspeed": {"stage": 2},
    }
    for name, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(data.setdefault(name, {}).get(key), dict):
                data[name][key].update(value)
            else:
                data.setdefault(name, {})[key] = value
    return from_dict(FrozenConfig, data)


def loader_batches(cfg, tokenizer, n: int) -> list[dict]:
    """`n` batches from our own loader (CaptionStream), tensors only, held in memory so that step
    timings do not include data loading."""
    import torch

    from frozen_scale.data.loader import CaptionStream, ResumableBatches
    from frozen_scale.data.shards import list_shards

    stream = CaptionStream.from_config(cfg, list_shards(cfg.data.train_shards), tokenizer, seed=cfg.train.seed,
                                       rank=0, world_size=1)
    batches = ResumableBatches(stream, 0)
    return [{k: t for k, t in next(batches).items() if torch.is_tensor(t)} for _ in range(n)]


def alternate(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, dict]:
    """Seconds per call of each candidate, interleaved A B A B ... so both see the same machine
    load, and every call follows a call of another candidate (none runs with its own data still
    warm in the caches from a call just before); `warmup` calls of each run first, discarded.
    Returns {name: {"wall": [...], "cpu": [...]}}: wall-clock seconds, and this process's CPU
    seconds (all threads), which other work on a shared machine disturbs far less."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, dict] = {name: {"wall": [], "cpu": []} for name in candidates}
    for _ in range(rounds):
        for name in candidates:
            w0, c0 = time.perf_counter(), time.process_time()
            candidates[name]()
            times[name]["cpu"].append(time.process_time() - c0)
            times[name]["wall"].append(time.perf_counter() - w0)
    return times


def paired_ratios(times: dict[str, dict], num: str, den: str, clock: str = "cpu") -> list[float]:
    """Per-round ratios num/den on `clock` ("cpu" or "wall"): each round's runs were neighbours."""
    return [a / b for a, b in zip(times[num][clock], times[den][clock])]


def median(values) -> float:
    return float(statistics.median(values))


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), {gpu}, torch {torch.__version__}"


def parser(doc: str, smoke: str = "--quick", smoke_help: str = "a smoke run for the tests"):
    """The benchmark's argument parser: its smoke flag and `--results-dir`."""
    import argparse

    out = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument(smoke, action="store_true", help=smoke_help)
    out.add_argument("--results-dir", default=None,
                     help=f"where the JSON result goes (default {RESULTS.relative_to(REPO)}; a smoke run writes "
                          "none unless given)")
    return out


def report(args, name: str, figure: float, what: str, goal: float | None = None, better: str = "lower",
           digits: int = 3, extra: dict | None = None, line: str | None = None) -> dict:
    """Say whether the goal was met, print the figure last (`{name} ratio ({what}): {figure}`, or
    `line`), and write the result as JSON; returns it."""
    import datetime
    import json
    import math

    met = None
    if goal is not None and math.isfinite(figure):
        met = figure <= goal if better == "lower" else figure >= goal
        print(f"goal {'<=' if better == 'lower' else '>='} {goal:g}: {'met' if met else 'NOT met'}")
    result = {"name": name, "figure": figure if math.isfinite(figure) else None, "what": what, "goal": goal,
              "better": better, "met": met, "machine": machine(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "args": {k: v for k, v in vars(args).items() if k != "results_dir"}, **(extra or {})}
    smoke = any(vars(args).get(k) for k in ("quick", "tiny"))
    folder = args.results_dir or (None if smoke else str(RESULTS))
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(line or f"{name} ratio ({what}): {figure:.{digits}f}")
    return result


def read_result(folder, name: str) -> dict:
    """A benchmark's JSON result (what tests check instead of its printed lines)."""
    import json

    return json.loads((Path(folder) / f"{name}.json").read_text())


def quiet_logs() -> None:
    """DeepSpeed and transformers print a lot at INFO; the benchmarks print their own figures."""
    import logging

    for name in ("DeepSpeed", "deepspeed", "transformers", "frozen_scale.train", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover
        pass


def torchrun(nproc: int, script: Path, args: list[str], timeout: int = 900, env: dict | None = None):
    """Run `script` under torchrun with `nproc` local CPU ranks (gloo); returns the completed
    process (stdout and stderr captured). `env` adds to the ranks' environment."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           str(script), *args]
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun {script.name} x{nproc} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def add_thread_arg(parser) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine, multi-threaded matmuls "
                             "stall on busy cores and swamp the ratios with noise)")


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def run_main(main) -> None:
    """Run a benchmark's main; destroy the process group its Trainer made, if any, on the way out
    (a rank that exits with a live gloo group can abort in teardown)."""
    try:
        main()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            from frozen_scale.distributed import engine as dist_engine

            dist_engine.shutdown()


def add_worker_args(parser) -> None:
    """The hidden arguments a benchmark passes to itself when it relaunches under torchrun."""
    import argparse

    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
