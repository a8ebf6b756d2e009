"""The README and docs/ stay true to the tree: every repository path they name exists, every
script their commands run answers ``--help``, and each docs page says who it is for."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
         *[REPO / f / "README.md" for f in ("tools", "benchmarks", "datasets")]]
# Paths inside the repository as the docs write them; outputs (output/, .cache/) and dataset
# folders a user creates are not part of the tree.
PATH = re.compile(
    r"(?<![\w./-])((?:configs|tools|benchmarks|install|demo|datasets|maskclip_d2|tests|docs)"
    r"/[\w./*-]*[\w*])"
)
SCRIPT = re.compile(r"python3? ((?:tools|benchmarks|install|demo|datasets)/\w+\.py|train_net\.py)")


def named_paths(text):
    return {m.group(1).rstrip(".") for m in PATH.finditer(text)}


def test_the_path_pattern_finds_paths_in_prose_and_commands():
    text = "run `python tools/export_onnx.py --config-file configs/tiny/maskclip_tiny.yaml`."
    assert named_paths(text) == {"tools/export_onnx.py", "configs/tiny/maskclip_tiny.yaml"}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_path_a_page_names_exists(page):
    if not page.exists():
        pytest.fail(f"{page.relative_to(REPO)} is listed as a docs page but is missing")
    missing = []
    for path in sorted(named_paths(page.read_text())):
        if "*" in path or "<" in path:
            if not list(REPO.glob(path.replace("<", "*").replace(">", "*"))):
                missing.append(path)
        elif not (REPO / path).exists() and not (REPO / path).with_suffix("").exists():
            missing.append(path)
    assert missing == [], f"{page.relative_to(REPO)} names paths that do not exist"


def test_the_readme_is_an_index():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_each_docs_page_starts_with_its_reader(page):
    first = next(line for line in page.read_text().splitlines() if line.strip() and not line.startswith("#"))
    assert re.search(r"\bfor\b", first, re.IGNORECASE), f"{page.name}: first line {first!r}"


def test_every_script_the_docs_run_answers_help():
    scripts = set()
    for page in PAGES:
        if page.exists():
            scripts.update(SCRIPT.findall(page.read_text()))
    assert "demo/demo.py" in scripts and "train_net.py" in scripts
    failed = {}
    for script in sorted(scripts):
        run = subprocess.run([sys.executable, str(REPO / script), "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        if run.returncode != 0 or "usage" not in run.stdout.lower():
            failed[script] = run.stderr[-500:]
    assert failed == {}
