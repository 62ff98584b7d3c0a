"""`frozen-scale submit` and `frozen-scale plan`.

    frozen-scale submit CONFIG [--launcher local|slurm|ray|torchrun|deepspeed|k8s] [--dry-run]
                        [--address URL] [--wait] [--crd FILE] [section.key=value ...]
    frozen-scale plan CONFIG --nodes N --gpus-per-node G [--gpu-mem-gib 80] [--seq-len S] [--json]

Launcher settings come from the config's `launcher` section (dotted overrides work:
`launcher.nodes=4`); the command-line flags only choose the launcher and the action.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from frozen_scale.config import FrozenConfig, load_config

LAUNCHERS = ("local", "slurm", "ray", "torchrun", "deepspeed", "k8s")


def _split_overrides(rest: list[str]) -> list[str]:
    bad = [r for r in rest if "=" not in r or r.startswith("-")]
    if bad:
        raise SystemExit(f"frozen-scale: unexpected arguments {bad} (overrides look like section.key=value)")
    return rest


def _launch_overrides(overrides: list[str]) -> list[str]:
    """What the trainers get: launcher.* settings only matter to the submitter."""
    return [o for o in overrides if not o.startswith("launcher.")]


def submit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frozen-scale submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument("--launcher", choices=LAUNCHERS, help="default: launcher.kind from the config")
    parser.add_argument("--dry-run", action="store_true", help="print what would be submitted or run")
    parser.add_argument("--address", default="", help="ray: Jobs API address (http://head:8265)")
    parser.add_argument("--wait", action="store_true", help="ray: block until the job ends")
    parser.add_argument("--crd", default="", metavar="FILE",
                        help="k8s: check the RayJob against this CRD (kubectl get crd rayjobs.ray.io -o yaml)")
    return parser


def submit_main(argv: list[str]) -> int:
    args, rest = submit_parser().parse_known_args(argv)
    overrides = _split_overrides(rest)
    cfg = load_config(args.config, overrides)
    kind = args.launcher or cfg.launcher.kind
    if args.crd and kind != "k8s":
        print(f"frozen-scale submit: --crd checks k8s manifests; the launcher is {kind}", file=sys.stderr)
        return 2
    workdir = str(Path(cfg.launcher.workdir or os.getcwd()).resolve())
    missing = [n for n in cfg.launcher.env_from_host if n not in os.environ]
    if missing and kind in ("local", "torchrun", "deepspeed", "slurm") and not args.dry_run:
        print(f"frozen-scale submit: launcher.env_from_host names {', '.join(missing)}, not set in this "
              "environment (the job takes them from here, by name)", file=sys.stderr)
        return 2
    handler = {"local": _submit_hostlist, "torchrun": _submit_hostlist, "deepspeed": _submit_hostlist,
               "slurm": _submit_slurm, "ray": _submit_ray, "k8s": _submit_k8s}[kind]
    return handler(cfg, kind, args, _launch_overrides(overrides), workdir)


def _submit_slurm(cfg: FrozenConfig, kind, args, overrides: list[str], workdir: str) -> int:
    from launchers import slurm

    script = slurm.render_sbatch(cfg, args.config, overrides, workdir)
    if args.dry_run:
        print(script, end="")
        return 0
    log_dir = Path(workdir) / slurm.log_dir_for(cfg)
    job_id = slurm.submit(script, log_dir / f"{cfg.launcher.job_name}.sbatch")
    print(job_id)
    print(f"submitted slurm job {job_id}; logs in {log_dir}", file=sys.stderr)
    return 0


def _submit_hostlist(cfg: FrozenConfig, kind, args, overrides: list[str], workdir: str) -> int:
    from dataclasses import replace

    from launchers import hostlist

    if kind == "deepspeed":
        cfg = replace(cfg, launcher=replace(cfg.launcher, runner="deepspeed"))
    elif kind == "torchrun":
        cfg = replace(cfg, launcher=replace(cfg.launcher, runner="torchrun"))
    elif kind == "local" and not cfg.launcher.hosts:  # one machine, gpus_per_node processes
        cfg = replace(cfg, launcher=replace(cfg.launcher, nodes=1, hosts=["localhost"]))
    log_dir = cfg.launcher.log_dir or str(Path(cfg.train.run_dir) / "logs")
    commands = hostlist.render_node_commands(cfg, args.config, overrides, log_dir)
    if args.dry_run:
        import shlex

        for rank, (host, argv) in enumerate(commands):
            print(f"# node {rank} on {host}\n{shlex.join(hostlist.full_command(cfg, host, argv, workdir))}")
        return 0
    return hostlist.run_nodes(cfg, commands, workdir, str(Path(workdir) / log_dir))


def _submit_ray(cfg: FrozenConfig, kind, args, overrides: list[str], workdir: str) -> int:
    """The resolved config (overrides applied) goes with the job, in a folder Ray uploads."""
    import tempfile

    from launchers import ray_job, shared_storage

    shared_storage.require_shared(cfg, "ray", None if cfg.launcher.ray_working_dir else workdir)
    with tempfile.TemporaryDirectory(prefix="frozen-scale-submit-") as tmp:
        shipped = ray_job.ship_config(cfg, tmp)
        spec = ray_job.job_spec(cfg, workdir, shipped)
        if args.dry_run:
            files = {str(p.relative_to(tmp)): p.read_text() for p in sorted(Path(shipped).rglob("*")) if p.is_file()}
            print(json.dumps({"submit_job": spec, "uploaded_files": files}, indent=2))
            return 0
        address = args.address or cfg.launcher.ray_address or os.environ.get("RAY_ADDRESS", "")
        try:
            job_id = ray_job.submit(spec, address)
        except ray_job.RayAuthError as err:
            print(f"frozen-scale submit: {err}", file=sys.stderr)
            return 2
    print(job_id)
    if args.wait:
        status, logs = ray_job.wait(address, job_id)
        print(logs[-5000:], file=sys.stderr)
        print(f"ray job {job_id}: {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else 1
    return 0


def _submit_k8s(cfg: FrozenConfig, kind, args, overrides: list[str], workdir: str) -> int:
    """A ConfigMap with the resolved config (overrides applied) and the RayJob that mounts it;
    with --crd, printed only when the RayJob is valid against that CRD."""
    from launchers import k8s, shared_storage

    shared_storage.require_shared(cfg, "k8s", None)
    manifest = k8s.render_yaml(cfg)
    if args.crd:
        problems = _crd_problems(k8s.render_rayjob(cfg), args.crd)
        for line in problems:
            print(f"frozen-scale submit: {line}", file=sys.stderr)
        if problems:
            return 2
        print(f"valid against {args.crd} ({k8s.KIND} {k8s.API_VERSION})", file=sys.stderr)
    print(manifest, end="")
    if not cfg.launcher.k8s_secret:
        print("frozen-scale submit: warning: without launcher.k8s_secret the Ray cluster's dashboard and GCS take "
              "requests from any pod without a token; name a Secret holding RAY_AUTH_TOKEN to require one",
              file=sys.stderr)
    if not args.dry_run:
        print("# apply with: kubectl apply -f <this file>", file=sys.stderr)
    return 0


def _crd_problems(rayjob: dict, crd: str) -> list[str]:
    """Why `rayjob` does not fit the CRD in `crd` (or the CRD cannot be used), one line each."""
    from launchers import k8s, k8s_schema

    group, version = k8s.API_VERSION.split("/")
    try:
        validator = k8s_schema.crd_validator(crd, k8s.KIND, group, version)
    except k8s_schema.CRDError as err:
        return [str(err)]
    return [f"{crd}: {line}" for line in k8s_schema.errors(validator, rayjob)]


def plan_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frozen-scale plan", description="per-GPU memory plan")
    parser.add_argument("config")
    parser.add_argument("--nodes", type=int, default=0, help="default: launcher.nodes")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="default: launcher.gpus_per_node")
    parser.add_argument("--gpu-mem-gib", type=float, default=80.0, help="memory of one GPU")
    parser.add_argument("--seq-len", type=int, default=0, help="tokens per sample (default: from the config)")
    parser.add_argument("--lm", default="", help="LM folder/URL with a config.json (default: model.lm_path)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def plan_main(argv: list[str]) -> int:
    from launchers import plan

    args, rest = plan_parser().parse_known_args(argv)
    cfg = load_config(args.config, _split_overrides(rest))
    nodes = args.nodes or cfg.launcher.nodes
    per_node = args.gpus_per_node or cfg.launcher.gpus_per_node
    if nodes < 1 or per_node < 1:
        raise SystemExit("frozen-scale plan: --nodes and --gpus-per-node must be >= 1")
    if not (args.lm or cfg.model.lm_path):
        raise SystemExit("frozen-scale plan: the config has no model.lm_path; pass --lm FOLDER")
    inputs = plan.plan_inputs(cfg, nodes * per_node, args.seq_len, args.gpu_mem_gib, args.lm)
    rec = plan.recommend(inputs, cfg.train.micro_batch_size)
    try:
        reference = plan.deepspeed_reference(inputs)
    except ImportError:  # deepspeed is a dependency, but plan must work without it too
        reference = None
    if args.json:
        rows = [plan.estimate(inputs, s, cfg.train.micro_batch_size, c).row() for s in range(4) for c in (False, True)]
        print(json.dumps({"lm": vars(inputs.lm), "trainable_params": inputs.trainable_params,
                          "gpus": inputs.gpus, "seq_len": inputs.seq_len, "estimates": rows,
                          "recommendation": rec, "deepspeed_reference": reference}, indent=2))
    else:
        from launchers.plan_report import format_plan

        print(format_plan(inputs, cfg.deepspeed.stage, cfg.train.micro_batch_size,
                          cfg.model.activation_checkpointing, rec, reference))
    return 0 if rec["fits"] else 1
