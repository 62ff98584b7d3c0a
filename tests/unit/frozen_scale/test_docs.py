"""The user's guide and the docs: README.md stays a guide (the two commands first, at most 400
lines), every relative link and every repository file the docs and the code cite exists, the
generated configuration reference is current, and no code or config narrates history."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from frozen_scale.app.config_cmd import reference

REPO = Path(__file__).resolve().parents[3]
DOCS = sorted((REPO / "docs").glob("*.md"))
CITED = re.compile(r"(?<![\w./-])((?:frozen_scale|data_prep|launchers|configs|bench|docs|tests)/[\w./-]*\w)")


def test_readme_is_a_guide_with_the_two_commands_first():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 400
    first_block = text.split("```", 2)[1]
    assert "make demo" in first_block and "make test" in first_block


def _links(path: Path) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", path.read_text()) if "://" not in m and not m.startswith("#")]


@pytest.mark.parametrize("page", [REPO / "README.md", REPO / "bench" / "RESULTS.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_and_cited_files_exist(page):
    missing = []
    for link in _links(page):
        target = (page.parent / link.split("#")[0]).resolve()
        if not target.exists():
            missing.append(link)
    text = page.read_text()
    for cited in set(CITED.findall(text)):
        if "*" in cited or "{" in cited or cited.endswith("/") or "/." in cited:
            continue
        if not (REPO / cited).exists() and not (REPO / cited.rstrip(".")).exists():
            missing.append(cited)
    assert missing == [], f"{page.name} cites what the repository does not have: {missing}"


def test_files_the_code_cites_exist():
    missing = []
    for path in [*REPO.glob("frozen_scale/**/*.py"), *REPO.glob("data_prep/*.py"), *REPO.glob("launchers/*.py"),
                 *REPO.glob("bench/*.py"), *REPO.glob("configs/*.yaml"), REPO / "Makefile", REPO / "pyproject.toml"]:
        for cited in set(re.findall(r"(?<![\w./-])((?:docs|configs|bench)/[\w-]+\.(?:md|yaml|py|json))", path.read_text())):
            if not (REPO / cited).exists():
                missing.append(f"{path.relative_to(REPO)}: {cited}")
    assert missing == []


def test_config_reference_is_current():
    assert (REPO / "docs" / "config.md").read_text() == reference(), \
        "docs/config.md is stale: run `frozen-scale config > docs/config.md`"


def test_config_command_prints_resolved_values(tmp_path):
    import sys

    done = subprocess.run([sys.executable, "-m", "frozen_scale.app.cli", "config", str(REPO / "configs" / "tiny-cpu.yaml"),
                           "train.lr=0.25"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "lr: 0.25" in done.stdout, done.stderr


def test_no_code_or_config_narrates_history():
    hits = []
    for folder in ("frozen_scale", "data_prep", "launchers", "configs", "bench"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".md") and path.is_file():
                for n, line in enumerate(path.read_text().splitlines(), 1):
                    if re.search(r"issue #\d+|\b(first|second|third|[a-z]+th) round\b", line):
                        hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:80]}")
    assert hits == []


def test_every_module_has_its_tests_named():
    """Each module of the library, data_prep and launchers has a test_<module>.py of its own or a
    line in tests/README.md naming the tests that cover it; each named test file exists."""
    table = (REPO / "tests" / "README.md").read_text()
    own = {p.stem[len("test_"):] for p in (REPO / "tests").rglob("test_*.py")}
    missing = []
    for folder in ("frozen_scale", "data_prep", "launchers"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            rel = path.relative_to(REPO).as_posix()
            if f"`{rel}`" not in table and path.stem not in own:
                missing.append(rel)
    named = set(re.findall(r"((?:unit|e2e)/[\w/]+\.py)", table))
    gone = [n for n in named if not (REPO / "tests" / n).exists()]
    assert missing == [] and gone == [], (missing, gone)


def test_files_and_functions_stay_small():
    """No module of the library, data_prep or launchers over 400 lines; no function over 60."""
    import ast

    long_files, long_functions = [], []
    for folder in ("frozen_scale", "data_prep", "launchers"):
        for path in sorted((REPO / folder).rglob("*.py")):
            source = path.read_text()
            rel = path.relative_to(REPO).as_posix()
            if len(source.splitlines()) > 400:
                long_files.append(f"{rel}: {len(source.splitlines())}")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 60:
                        long_functions.append(f"{rel}:{node.lineno} {node.name}: {length}")
    assert long_files == [] and long_functions == [], (long_files, long_functions)


def test_the_worlds_results_table_is_the_committed_artifact():
    """Every number of docs/world.md's test-split table is the artifact's, rounded to two places."""
    import json

    artifact = json.loads((REPO / "docs" / "results" / "reproduce_seed0.json").read_text())
    text = (REPO / "docs" / "world.md").read_text()
    table = text.split("## The paper's prefix on the test split, one seed", 1)[1].split("\n\n")[2]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    header, body = rows[0], rows[2:]
    variants = artifact["variants"]
    assert [r[0] for r in body] == [*variants, "chance"]
    for row in body:
        for column, cell in zip(header[1:], row[1:]):
            if row[0] == "chance":
                value = variants["frozen"]["chance"][column]
                assert cell == ("-" if value is None else f"{value:.2f}"), (column, cell)
            else:
                assert cell == f"{variants[row[0]]['scores'][column]:.2f}", (row[0], column, cell)
    assert artifact["info"]["split"] == "test" and artifact["info"]["seed"] == 0
