"""pyflakes over the repository's Python files: no mistake it finds (a name redefined before
use, an f-string without placeholders, an undefined name...). Unused imports are left alone:
the package's ``__init__`` files re-export names and tests import fixtures that way."""
import ast
from pathlib import Path

from pyflakes import checker, messages

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("maskclip_d2", "tools", "benchmarks", "install", "demo", "datasets", "tests")


def python_files():
    files = [REPO / "train_net.py", REPO / "setup.py"]
    for folder in FOLDERS:
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def test_pyflakes_finds_no_mistake():
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        for message in checker.Checker(tree, filename=str(path.relative_to(REPO))).messages:
            if not isinstance(message, (messages.UnusedImport, messages.ImportStarUsed,
                                        messages.ImportStarUsage)):
                found.append(str(message))
    assert found == []
