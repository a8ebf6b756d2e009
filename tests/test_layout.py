"""The house rules of the layout (docs/DEVELOPMENT.md), read from the code's own imports:

* no import circle among ``maskclip_d2``'s modules (imports inside functions included);
* no module imports from a folder above its own, except the package root's modules
  (``maskclip_d2/*.py``: config, checkpoint, solver...); sideways (a sibling folder) is fine;
* nothing in ``maskclip_d2`` imports from ``tests/``, ``tools/`` or any other script;
* no script imports another script, and none puts a folder other than the repository root on
  ``sys.path``;
* no tracked text file names a path of one particular machine.
"""
import ast
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "maskclip_d2"
SCRIPT_FOLDERS = ("tools", "benchmarks", "install", "demo", "datasets")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> List[Tuple[str, List[str]]]:
    """(module, names) of every import statement of a file, relative ones made absolute."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def package_edges() -> Dict[str, Set[str]]:
    """module -> the package modules it imports (``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module)."""
    modules = package_modules()
    edges = {}
    for name, path in modules.items():
        targets = set()
        for base, names in imported_modules(path):
            if not base.startswith("maskclip_d2"):
                continue
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            targets.update(subs or [base])
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def find_circle(edges: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a list of modules, or [] when there is none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                circle = visit(nxt)
                if circle:
                    return circle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            circle = visit(node)
            if circle:
                return circle
    return []


def folder_of(module: str, modules: Dict[str, Path]) -> Tuple[str, ...]:
    path = modules[module]
    return path.parent.relative_to(REPO).parts


def upward_imports(edges: Dict[str, Set[str]]) -> List[str]:
    modules = package_modules()
    bad = []
    for source, targets in edges.items():
        here = folder_of(source, modules)
        for target in targets:
            there = folder_of(target, modules)
            is_ancestor = len(there) < len(here) and here[: len(there)] == there
            if is_ancestor and there != ("maskclip_d2",):
                bad.append(f"{source} -> {target}")
    return sorted(bad)


def test_the_import_check_sees_circles_and_upward_imports():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) == []
    edges = package_edges()
    assert "maskclip_d2.modeling.encoder.maskclip_encoder" in edges["maskclip_d2.modeling.encoder.clip_baseline"]
    assert upward_imports({"maskclip_d2.modeling.proposals.sources": {"maskclip_d2.modeling.postprocessing"}})


def test_the_package_has_no_import_circle():
    assert find_circle(package_edges()) == []


def test_no_module_imports_from_a_folder_above_its_own():
    assert upward_imports(package_edges()) == []


def script_files() -> List[Path]:
    files = [REPO / "train_net.py", REPO / "setup.py"]
    for folder in SCRIPT_FOLDERS:
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def test_the_package_imports_no_script_and_no_test():
    scripts = {p.stem for p in script_files()} | {"tests", "helpers", "conftest"}
    offenders = [
        f"{name} imports {base}"
        for name, path in package_modules().items()
        for base, _ in imported_modules(path)
        if base.split(".")[0] in scripts
    ]
    assert offenders == []


def test_no_script_imports_another_or_extends_sys_path_beyond_the_repository():
    scripts = {p.stem for p in script_files()}
    offenders = []
    for path in script_files():
        text = path.read_text()
        for base, _ in imported_modules(path):
            if base.split(".")[0] in scripts:
                offenders.append(f"{path.relative_to(REPO)} imports the script {base}")
        for line in text.splitlines():
            if "sys.path.insert" in line or "sys.path.append" in line:
                # The repository root only (scripts run from a checkout import maskclip_d2).
                if not re.search(r"sys\.path\.insert\(0, (REPO|str\(REPO\)|os\.path\.dirname\(os\.path\.dirname\(os\.path\.abspath\(__file__\)\)\))\)", line) \
                        and "target" not in line:
                    offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert offenders == []


MACHINE_PATHS = re.compile(r"(?<![\w.])/(work|root|home/[a-z_][\w-]*|Users/\w+|mnt/\w+)/|/[\w.-]+\.lock\b|\bflock\b")


def tracked_text_files() -> List[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    binary = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".pdf", ".onnx", ".pth", ".pt")
    return [REPO / f for f in listed.splitlines() if f and not f.endswith(binary) and (REPO / f).is_file()]


def test_no_tracked_file_names_a_path_of_one_particular_machine():
    assert MACHINE_PATHS.search("flock " + "/work" + "/big" + "run.lock python x.py")
    assert MACHINE_PATHS.search("cache in /home/alice/.cache")
    assert not MACHINE_PATHS.search("~/.cache/clip and datasets/coco/panoptic")
    assert not MACHINE_PATHS.search("with self.lock:")
    this_file = Path(__file__).resolve()
    hits = []
    for path in tracked_text_files():
        if path.resolve() == this_file:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATHS.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert hits == []
