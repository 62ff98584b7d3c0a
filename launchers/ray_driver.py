"""The Ray job's driver: train on the Ray cluster, one process per GPU across nodes.

Submitted by `frozen-scale submit --launcher ray` through the Ray Jobs API (or run by a KubeRay
RayJob, `--launcher k8s`); runs on the head node:

    python -m launchers.ray_driver CONFIG [overrides] --num-workers 8 [--use-gpu] ...

CONFIG is the resolved run config that travelled with the job, never a path of the submitting
machine: `shipped:frozen_scale_run/config.yaml`, a file of the folder `submit` uploads as a
runtime_env `py_modules` entry (Ray unpacks it on the node and puts it on the import path), or
on k8s the path where the job's ConfigMap is mounted. The driver reads it once and hands its text
to the workers, which write it to a file of their own node for the trainer.

Ray Train's TorchTrainer places the workers (SPREAD over nodes) and sets up a process group; each
worker then runs the same training entry as torchrun would (`python -m frozen_scale.app.cli train`)
with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR set, so the trainer, its DeepSpeed engine and its
signal handling are exactly those of every other launcher. The trainer runs under the node
supervisor (`launchers.node --direct`) in a session of its own, so that however Ray ends a worker
the trainer is told to stop and commits first:

- `ray job stop` sends TERM to the driver (and SIGKILL after RAY_JOB_STOP_WAIT_TIME_S, which
  `submit` sets to `launcher.signal_seconds`): the driver sets a stop flag (a small actor every
  worker waits on), each worker sends TERM to its supervisor, the trainers commit one checkpoint
  and exit 75, the workers return and the driver exits 75; a resubmitted job resumes;
- a worker that is killed (the worker group torn down, its node's raylet gone, a pod evicted)
  kills its direct child, the supervisor, and the kernel's parent-death signal gives the trainer
  its stop (launchers.node); a pod's preStop hook (`launchers.node --stop-local`) does the same
  before Kubernetes signals the container. Rank 0 picks a fresh
rendezvous port and shares it over Ray Train's group. A preempted trainer (exit EXIT_REQUEUE = 75,
checkpoint committed) fails the attempt; Ray Train restarts the worker group (FailureConfig.max_failures)
and `train.resume=auto` continues from the checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from frozen_scale.constants import EXIT_REQUEUE
from launchers.commands import NODE_MODULE, TRAIN_MODULE, train_args
from launchers.node import set_parent_death_signal


SHIPPED_PREFIX = "shipped:"
SHIPPED_PACKAGE = "frozen_scale_run"
"""The folder `submit` ships the config in (runtime_env py_modules): Ray puts it on the import path."""
SHIPPED_FILE = "config.yaml"
SHIPPED_CONFIG = f"{SHIPPED_PREFIX}{SHIPPED_PACKAGE}/{SHIPPED_FILE}"
STOP_NAMESPACE = "frozen_scale"
"""The Ray namespace of the job's stop flag (a named actor, one per driver)."""
STOPPED = "stopped"
"""What a worker returns when its trainer committed and exited after the job was stopped."""


class StopFlag:
    """Set once by the driver when the job is stopped; every worker holds a pending `wait()`."""

    def __init__(self):
        self._event = asyncio.Event()

    async def set(self) -> None:
        self._event.set()

    async def wait(self) -> bool:
        await self._event.wait()
        return True


def read_config(ref: str) -> str:
    """The run config's text: `ref` is a path on this node, or `shipped:PACKAGE/FILE`, a file of a
    folder shipped with the job as a runtime_env py_modules entry."""
    if not ref.startswith(SHIPPED_PREFIX):
        return Path(ref).read_text()
    package, _, name = ref[len(SHIPPED_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"launchers.ray_driver: {package} is not on the import path: the job was submitted "
                         "without the runtime_env py_modules entry that carries its config")
    return (Path(list(spec.submodule_search_locations)[0]) / name).read_text()


def _node_config_file(text: str, name: str, rank: int) -> Path:
    """The config written to a file of this node, for this rank's trainer."""
    safe_name = re.sub(r"[^\w.-]+", "-", name)
    fd, path = tempfile.mkstemp(prefix=f"frozen-scale-{safe_name}-rank{rank}-", suffix=".yaml")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return Path(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _supervisor_preexec() -> None:
    """In the supervisor's process before exec: TERM when the worker dies without killing it (a
    crashed worker), and normal CPU priority: Ray starts its workers at nice 15, below every other
    process on the node, which would starve the trainer and its data loaders of CPU. Raising the
    priority needs CAP_SYS_NICE; without it the trainer stays at Ray's (the worker says so)."""
    set_parent_death_signal(signal.SIGTERM)
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            pass


def train_worker(loop_config: dict) -> None:
    """Runs inside each Ray Train worker."""
    import ray
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    missing = [n for n in loop_config.get("env_from_host", []) if n not in os.environ]
    if missing:  # taken from the node's environment by name (where `ray start` ran), never shipped
        raise RuntimeError(f"rank {rank} on {socket.gethostname()}: launcher.env_from_host names "
                           f"{', '.join(missing)}, not set in this Ray node's environment")
    port = [_free_port() if rank == 0 else 0]
    dist.broadcast_object_list(port, src=0)
    env = dict(os.environ)
    env.update({k: str(v) for k, v in loop_config["env"].items()})
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(ctx.get_local_rank()),
               LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()), NODE_RANK=str(ctx.get_node_rank()),
               MASTER_ADDR=os.environ["MASTER_ADDR"], MASTER_PORT=str(port[0]))
    log_dir = Path(loop_config["log_dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"ray-rank{rank}.log"
    config_file = _node_config_file(loop_config["config_yaml"], loop_config["name"], rank)
    argv = [sys.executable, "-m", NODE_MODULE, "--direct", f"--grace={loop_config['grace']}", "--",
            sys.executable, "-m", TRAIN_MODULE, *train_args(str(config_file), loop_config["overrides"])]
    stop = ray.get_actor(loop_config["stop_actor"], namespace=STOP_NAMESPACE).wait.remote()
    node_id = ray.get_runtime_context().get_node_id()
    print(f"rank {rank}/{world} on {socket.gethostname()} ray node {node_id}: {' '.join(argv)} (log {log_path})",
          flush=True)
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=loop_config["workdir"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_supervisor_preexec)
            nice = os.getpriority(os.PRIO_PROCESS, proc.pid)
            if nice > 0:
                print(f"rank {rank}: the trainer runs at nice {nice} (Ray's worker priority; raising it needs "
                      "CAP_SYS_NICE)", flush=True)
            code, stopped = _wait(proc, stop, rank)
    finally:
        config_file.unlink(missing_ok=True)
    tail = log_path.read_text(errors="replace")[-2000:]
    dist.barrier()  # every rank's trainer has exited before any worker reports
    if stopped and code in (0, EXIT_REQUEUE):
        print(f"rank {rank}: the job was stopped; the trainer exited {code}", flush=True)
        return STOPPED
    if code == EXIT_REQUEUE:
        raise RuntimeError(f"rank {rank}: preempted (checkpoint committed); restarting to resume")
    if code != 0:
        raise RuntimeError(f"rank {rank}: training exited {code}; last output:\n{tail}")
    print(f"rank {rank}: training finished", flush=True)


def _wait(proc: subprocess.Popen, stop, rank: int) -> tuple[int, bool]:
    """Wait for the supervisor; when the driver sets the stop flag, send it TERM (once).
    Returns (exit code, whether the job was stopped)."""
    import ray

    stopped = False
    while True:
        try:
            return proc.wait(timeout=1.0), stopped
        except subprocess.TimeoutExpired:
            pass
        if not stopped and ray.wait([stop], timeout=0)[0]:
            stopped = True
            print(f"rank {rank}: the job is being stopped: the trainer commits a checkpoint", flush=True)
            os.kill(proc.pid, signal.SIGTERM)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="launchers.ray_driver")
    parser.add_argument("config", help=f"a path on this node, or {SHIPPED_CONFIG} (shipped with the job)")
    parser.add_argument("--num-workers", type=int, required=True)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--max-failures", type=int, default=3)
    parser.add_argument("--storage", required=True, help="Ray Train storage_path (shared by all nodes)")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--name", default="frozen-scale")
    parser.add_argument("--grace", type=float, default=120.0,
                        help="seconds a stop may take (launcher.signal_seconds), reported when passed")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every trainer")
    parser.add_argument("--env-from-host", action="append", default=[],
                        help="NAME the trainers take from their node's environment (checked there)")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(list(sys.argv[1:] if argv is None else argv))
    config_yaml = read_config(args.config)
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))
    stop_actor = f"stop-{ray.get_runtime_context().get_job_id()}"
    flag = ray.remote(num_cpus=0)(StopFlag).options(name=stop_actor, namespace=STOP_NAMESPACE).remote()
    stopping: list[int] = []

    def on_stop(signum, _frame):
        if not stopping:
            stopping.append(signum)
            print(f"ray driver: signal {signum}: stopping the trainers (they commit a checkpoint)", flush=True)
            flag.set.remote()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, on_stop)
    env = dict(item.split("=", 1) for item in args.env)
    loop_config = {
        "config_yaml": config_yaml,
        "overrides": overrides,
        "name": args.name,
        "workdir": os.getcwd(),
        "log_dir": str(Path(args.log_dir).resolve()),
        "env": env,
        "stop_actor": stop_actor,
        "env_from_host": list(args.env_from_host),
        "grace": args.grace,
    }
    resources = {"CPU": args.cpus_per_worker}
    if args.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=args.num_workers, use_gpu=args.use_gpu,
                                               resources_per_worker=resources, placement_strategy="SPREAD"),
        run_config=ray.train.RunConfig(name=args.name, storage_path=str(Path(args.storage).resolve()),
                                       failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
                                       worker_runtime_env={"env_vars": env} if env else None),
    )
    result = trainer.fit()
    if stopping:
        print(f"ray training stopped ({'failed: ' + str(result.error) if result.error else 'checkpoint committed'})",
              flush=True)
        return EXIT_REQUEUE if not result.error else 1
    if result.error:
        print(f"ray training failed: {result.error}", file=sys.stderr)
        return 1
    print("ray training finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
