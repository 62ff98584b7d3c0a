"""A mistake the user can fix is one line on stderr, exit code 2, no traceback: for every command
run as `python -m frozen_scale.app.cli` (and from rank 0 only when a job has several ranks). And
`--version` and every command's `--help` answer without starting any work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import frozen_scale
from frozen_scale.app import cli
from tests.support.core_fixtures import tiny_config_dict
from tests.support.dist_util import REPO, child_env, launch_ranks

# case -> (argv with {tmp} for the test's folder, what the line says)
CASES = {
    "train-empty-lm-path": ("train {tmp}/empty-lm.yaml", "model.lm_path is empty"),
    "train-missing-model-folder": ("train {tmp}/no-lm.yaml", "model folder not found: {tmp}/no-such-lm"),
    "train-missing-shards": ("train {tmp}/no-shards.yaml", "no manifest at {tmp}/no-such-shards/manifest.json"),
    "train-missing-config": ("train {tmp}/no-such.yaml", "config file not found: {tmp}/no-such.yaml"),
    "eval-missing-run": ("eval {tmp}/no-such-run --task caption", "{tmp}/no-such-run is neither an export folder"),
    "eval-missing-shards": ("eval {tmp}/run --task caption --shards {tmp}/no-such-shards",
                            "no manifest at {tmp}/no-such-shards/manifest.json"),
    "export-missing-run": ("export {tmp}/no-such-run", "no training run at {tmp}/no-such-run"),
    "export-no-checkpoint": ("export {tmp}/run", "no committed checkpoint under {tmp}/run/checkpoints"),
    "prep-missing-input": ("prep urls {tmp}/no-such.parquet --out {tmp}/prepped", "{tmp}/no-such.parquet"),
}


def write_config(path: Path, tmp: Path, shards: Path, run_dir: Path | None = None, **model) -> Path:
    """A config; each has its run folder (they run at once, and one live job holds a folder)."""
    cfg = tiny_config_dict(tmp / "no-such-lm", shards, run_dir or tmp / f"run-{path.stem}")
    cfg["model"].update(model)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_shards) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """Every case run at once, each in a process of its own (they spend their time importing)."""
    tmp = tmp_path_factory.mktemp("user_errors")
    write_config(tmp / "empty-lm.yaml", tmp, tiny_shards, lm_path="")
    write_config(tmp / "no-lm.yaml", tmp, tiny_shards)
    write_config(tmp / "no-shards.yaml", tmp, tmp / "no-such-shards")
    (tmp / "run").mkdir()
    write_config(tmp / "run" / "config.yaml", tmp, tiny_shards, tmp / "run")  # a training run that saved no checkpoint
    procs = {name: subprocess.Popen([sys.executable, "-m", "frozen_scale.app.cli",
                                     *argv.format(tmp=tmp).split()], cwd=REPO, env=child_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (argv, _) in CASES.items()}
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return tmp, done


@pytest.mark.parametrize("case", CASES)
def test_a_user_error_is_one_line_and_exit_2(outcomes, case):
    tmp, done = outcomes
    run = done[case]
    said = CASES[case][1].format(tmp=tmp)
    lines = run.stderr.splitlines()
    assert run.returncode == 2, run.stderr[-4000:]
    assert len(lines) == 1 and lines[0].startswith(f"frozen-scale {case.split('-')[0]}: "), run.stderr[-4000:]
    assert said in lines[0] and "Traceback" not in run.stderr + run.stdout


def test_every_rank_exits_2_and_rank_0_alone_says_why(tmp_path, tiny_shards):
    """Two ranks, an empty model.lm_path: node rank 0 finds it, the collective that shares its
    outcome hands the error to rank 1; both leave with 2, one line in all."""
    cfg = write_config(tmp_path / "empty-lm.yaml", tmp_path, tiny_shards, lm_path="")
    ranks = launch_ranks(2, ["train", str(cfg)], timeout=300)
    said = "".join(r.stderr for r in ranks)
    assert [r.returncode for r in ranks] == [2, 2], said[-4000:]
    assert ranks[1].stderr == "" and said.count("\n") == 1, said[-4000:]
    assert said.startswith("frozen-scale train: config error: model.lm_path is empty")


def test_version(capsys, monkeypatch):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"frozen-scale {frozen_scale.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", frozen_scale.__version__)

    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(frozen_scale, "__version__", "9.8.7")
    assert cli.version() == "9.8.7"  # a source checkout that was never installed


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_help_of_every_command_starts_no_work(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where `demo` or `reproduce` would write their runs
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: frozen-scale {command}"), out
    assert list(tmp_path.iterdir()) == []
