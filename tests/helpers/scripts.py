"""The repository's scripts (``train_net.py``, ``tools/*.py``, ``demo/demo.py``...) loaded as
modules by their path, so tests call their functions without putting a folder on ``sys.path``."""
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_script(relative_path: str):
    """The module of the script at ``REPO / relative_path``, loaded once per test session."""
    name = "script_" + relative_path[: -len(".py")].replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
