"""Secrets by reference: a job started through every launcher with `launcher.env_from_host` naming
a variable set to a sentinel writes the sentinel nowhere (files of the run, its checkpoints,
generated scripts and manifests) and shows it in no process's argv; a secret given by value in
`launcher.env` is refused; what the project writes masks secret-looking values."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from frozen_scale.config import ConfigError, load_config, save_config
from frozen_scale.secrets import looks_secret, redact
from launchers import cli
from tests.support.dist_util import REPO, child_env

SENTINEL = "sentinel-8d1f0c77e2"
NAME = "FROZEN_TEST_TOKEN"


def _files_holding(root: Path, text: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and text.encode() in path.read_bytes():
            found.append(str(path))
    return found


def test_what_looks_secret():
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "RAY_AUTH_TOKEN", "WANDB_API_KEY", "DB_PASSWORD", "key",
                 "secret", "GOOGLE_APPLICATION_CREDENTIALS", "AWS_ACCESS_KEY_ID"):
        assert looks_secret(name), name
    for name in ("image_key", "caption_key", "max_new_tokens", "tokenizer_path", "AWS_DEFAULT_REGION", "OMP_NUM_THREADS"):
        assert not looks_secret(name), name
    assert redact({"storage": {"key": "AKIA", "secret": "x", "endpoint_url": "http://u:pw@h:9000"}}) == \
        {"storage": {"key": "***", "secret": "***", "endpoint_url": "http://u:***@h:9000"}}


def test_a_secret_in_launcher_env_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="launcher.env_from_host: \\[AWS_SECRET_ACCESS_KEY\\]"):
        load_config(None, ["launcher.env.AWS_SECRET_ACCESS_KEY=S3CR3T"])


def test_saved_config_masks_url_passwords(tmp_path):
    cfg = load_config(None, [f"data.train_shards=s3://user:{SENTINEL}@bucket/shards"])
    save_config(cfg, tmp_path / "config.yaml")
    assert SENTINEL not in (tmp_path / "config.yaml").read_text()


@pytest.mark.parametrize("launcher, extra", [
    ("slurm", []),
    ("torchrun", ["launcher.nodes=2", "launcher.hosts=[localhost, gpu-b]"]),
    ("ray", []),
    ("k8s", ["launcher.container=img:1", "launcher.k8s_secret=run-secrets"]),
])
def test_dry_run_of_every_launcher_holds_no_secret(launcher, extra, tiny_run_config, capsys, monkeypatch):
    monkeypatch.setenv(NAME, SENTINEL)
    shared = f"launcher.shared_mounts=[{Path(tiny_run_config).parent}]"
    assert cli.submit_main([str(tiny_run_config), "--launcher", launcher, "--dry-run", f"launcher.env_from_host=[{NAME}]",
                            shared, *extra]) == 0
    out = capsys.readouterr().out
    assert SENTINEL not in out
    if launcher == "k8s":
        _, job = yaml.safe_load_all(out)
        pods = [job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"],
                *(g["template"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])]
        for pod in pods:
            (container,) = pod["spec"]["containers"]
            assert container["envFrom"] == [{"secretRef": {"name": "run-secrets"}}]
            assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"]
    if launcher == "torchrun":
        assert f"SendEnv={NAME}" in out
    if launcher == "ray":
        assert f"--env-from-host={NAME}" in out


def test_slurm_script_is_private_and_quotes_every_user_value(tiny_run_config, tmp_path, monkeypatch):
    from launchers import slurm

    cfg = load_config(tiny_run_config)
    script = slurm.render_sbatch(cfg, str(tiny_run_config), ["train.run_name=$(touch /tmp/pwned)"], str(tmp_path))
    assert "'train.run_name=$(touch /tmp/pwned)'" in script  # single-quoted: never run
    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/sh\necho 4242\n")
    fake.chmod(0o755)
    path = tmp_path / "logs" / "job.sbatch"
    assert slurm.submit(script, path, sbatch=str(fake)) == "4242"
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="one line"):
        load_config(tiny_run_config, ['launcher.partition="gpu\\n#SBATCH --uid=0"'])
    with pytest.raises(ConfigError, match="one line"):
        load_config(tiny_run_config, ['launcher.setup=["module load x\\nrm -rf /"]'])


def _argv_of_all() -> list[bytes]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes())
            except OSError:
                pass
    return out


def _a_trainer_has(value: str) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"frozen_scale.app.cli" in argv and b"train" in argv:
                if f"{NAME}={value}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    return True
        except OSError:
            continue
    return False


@pytest.mark.slow
def test_a_training_job_writes_the_secret_nowhere(tiny_run_config, tmp_path):
    """2 steps through `frozen-scale submit` (the local launcher: node supervisor, torchrun, the
    trainer, loader workers) with the secret in the environment, named by env_from_host."""
    cfg = yaml.safe_load(Path(tiny_run_config).read_text())
    run = Path(cfg["train"]["run_dir"])
    env = child_env({NAME: SENTINEL})
    proc = subprocess.Popen([sys.executable, "-m", "frozen_scale.app.cli", "submit", str(tiny_run_config), "--launcher",
                             "local", f"launcher.env_from_host=[{NAME}]", f"launcher.python={sys.executable}",
                             "train.steps=2", "checkpoint.every=1", "data.num_workers=1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen_in_argv, trainer_has_it = False, False
    while proc.poll() is None:
        seen_in_argv |= any(SENTINEL.encode() in argv for argv in _argv_of_all())
        trainer_has_it |= _a_trainer_has(SENTINEL)
        time.sleep(0.2)
    out = proc.stdout.read().decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert not seen_in_argv
    assert trainer_has_it  # it reached the trainers, by their environment
    assert SENTINEL not in out
    assert _files_holding(run, SENTINEL) == []
    assert list(run.glob("checkpoints/step_*/COMMITTED"))
