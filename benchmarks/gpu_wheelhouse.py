#!/usr/bin/env python
"""The wheels a GPU machine lacks for ``benchmarks/gpu_check.py``: built here, installed there.

A GPU machine without a package index (docs/BENCHMARKS.md, "GPU figures") that has Python 3.12 with PyTorch, torchvision,
NumPy 2, SciPy, Pillow and OpenCV (``PRESENT``), but none of detectron2, fvcore, iopath, pycocotools,
openai-clip, panopticapi or lvis, and it reaches no package index. So:

  here, once, with the project's venv and the package index:
      python benchmarks/gpu_wheelhouse.py prepare .gpu_wheelhouse
  builds the git-ignored folder ``.gpu_wheelhouse/``: one wheel per distribution of
  ``CARRIED``, at the version this venv runs (pip download --python-version 3.12
  --only-binary=:all: --no-deps; sdist-only ones built with pip wheel; detectron2 and lvis are
  our patched pure-Python builds of install/install_detectron2.py), a MANIFEST.json naming them,
  and a check that every requirement of every wheel is carried or expected on the machine;

  there, no network:
      gpu_check.py --wheelhouse .gpu_wheelhouse   (calls ``install`` below)
  installs, with pip --no-index --no-deps, only the carried distributions whose module is not
  importable already, into a folder put first on ``sys.path``.
"""
import argparse
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.12"

# distribution -> the module whose presence means it is installed. Everything ``import
# maskclip_d2``, train_net.py and gpu_check.py import that the GPU machine lacks.
CARRIED: Dict[str, str] = {
    "detectron2": "detectron2",  # ours, install/install_detectron2.py
    "lvis": "lvis",  # ours, patched for NumPy >= 1.24
    "fvcore": "fvcore",
    "iopath": "iopath",
    "portalocker": "portalocker",
    "yacs": "yacs",
    "tabulate": "tabulate",
    "termcolor": "termcolor",
    "cloudpickle": "cloudpickle",
    "omegaconf": "omegaconf",
    "hydra-core": "hydra",
    "antlr4-python3-runtime": "antlr4",
    "pycocotools": "pycocotools",
    "panopticapi-lite": "panopticapi",
    "openai-clip": "clip",
    "ftfy": "ftfy",
    "wcwidth": "wcwidth",
    "regex": "regex",
    "tqdm": "tqdm",
    "PyYAML": "yaml",
    "setuptools": "pkg_resources",  # clip imports pkg_resources (gone from setuptools >= 81)
}

# Expected on the GPU machine, never carried: compiled against its CUDA / NumPy, or large.
PRESENT: Dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "scipy": "scipy",
    "pillow": "PIL",
    "opencv-python": "cv2",  # detectron2's point_rend project imports it; lvis requires it
}

# Requirements of carried wheels that nothing gpu_check runs imports (checked by ``prepare``).
NOT_NEEDED = {
    "matplotlib": "detectron2's Visualizer and lvis' plots: not used by gpu_check",
    "tensorboard": "detectron2's TensorboardXWriter: not used by gpu_check",
    "packaging": "imported by setuptools' pkg_resources from its own vendored copy",
    "typing-extensions": "on the GPU machine (a requirement of torch)",
    "importlib-resources": "backport for Python < 3.9",
    "scikit-image": "declared by panopticapi-lite, imported by none of its modules",
    "platformdirs": "declared by panopticapi-lite, imported by none of its modules",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip(*args: str, quiet_failure: bool = False) -> None:
    """``python -m pip ARGS``; with ``quiet_failure`` its output is captured (the caller has
    another way when it fails)."""
    run = subprocess.run([sys.executable, "-m", "pip", *args],
                         capture_output=quiet_failure, text=True)
    if run.returncode:
        raise subprocess.CalledProcessError(run.returncode, run.args, run.stdout, run.stderr)


def _our_wheels(cache_dir: Path) -> List[Path]:
    """detectron2 and lvis, as install/install_detectron2.py builds them (cached or built now)."""
    run = subprocess.run(
        [sys.executable, str(REPO / "install" / "install_detectron2.py"), "--print-wheels",
         "--cache-dir", str(cache_dir)],
        capture_output=True, text=True, check=True,
    )
    return [Path(line) for line in run.stdout.splitlines() if line.strip()]


def _wheel_requirements(wheel: Path) -> List[str]:
    """Requires-Dist lines of a wheel that apply on Linux / CPython 3.12 without extras."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    env = {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".0",
           "sys_platform": "linux", "platform_system": "Linux", "extra": ""}
    names = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(env):
                names.append(_canonical(req.name))
    return names


def installs_on_target(wheel_name: str) -> bool:
    """Whether a wheel file name fits CPython 3.12 on x86-64 Linux: pure Python 3, or built for
    cp312 (or the stable ABI) on manylinux / musllinux x86-64."""
    python_tags, abi, platforms = wheel_name[: -len(".whl")].split("-")[-3:]
    python_tags = python_tags.split(".")
    if platforms == "any":
        return any(t in ("py3", "py2.py3") or t.startswith("py3") for t in python_tags)
    cpython = "cp" + PYTHON_VERSION.replace(".", "")
    return (cpython in python_tags or abi == "abi3") and any(
        "linux" in p and p.endswith("x86_64") for p in platforms.split(".")
    )


def wheel_distribution(wheel: Path) -> str:
    """The canonical distribution name of a wheel file."""
    return _canonical(wheel.name.split("-")[0])


def unmet_requirements(wheels: List[Path]) -> Dict[str, List[str]]:
    """{wheel's distribution: its requirements that are neither carried, nor expected on the
    GPU machine, nor known to be unused}; empty when the wheelhouse is complete."""
    known = {_canonical(d) for d in (*CARRIED, *PRESENT, *NOT_NEEDED)}
    unmet = {}
    for wheel in wheels:
        missing = [r for r in _wheel_requirements(wheel) if r not in known]
        if missing:
            unmet[wheel_distribution(wheel)] = missing
    return unmet


def _carried_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        sys.exit(f"[wheelhouse] {dist} is not installed in {sys.prefix}: run this with the "
                 f"project's venv (make setup), whose versions the wheelhouse carries")


def prepare(folder: Path, cache_dir: Path, max_mb: Optional[float] = None) -> Dict:
    """Builds ``folder`` (which must not exist yet or be a wheelhouse of ours) and returns its
    manifest. Needs the package index and the project's venv (the versions carried are the ones
    it runs)."""
    if folder.exists() and not (folder / "MANIFEST.json").exists():
        sys.exit(f"{folder} exists and is not a wheelhouse of ours (no MANIFEST.json): "
                 f"give a new folder")
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "wheels"
        build.mkdir()
        for wheel in _our_wheels(cache_dir):
            shutil.copy(wheel, build)
        for dist in CARRIED:
            if dist in ("detectron2", "lvis"):
                continue
            spec = f"{dist}=={_carried_version(dist)}"
            try:
                _pip("download", "--quiet", "--no-deps", "--only-binary=:all:",
                     "--python-version", PYTHON_VERSION, "--dest", str(build), spec,
                     quiet_failure=True)
            except subprocess.CalledProcessError:
                print(f"[wheelhouse] no wheel of {spec} for Python {PYTHON_VERSION}: building one")
                _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(build), spec)
        wheels = sorted(build.glob("*.whl"))
        carried = {_canonical(d) for d in CARRIED}
        found = {wheel_distribution(w) for w in wheels}
        if found != carried:
            sys.exit(f"[wheelhouse] wheels {sorted(found)} do not match the list {sorted(carried)}")
        for w in wheels:
            if not installs_on_target(w.name):
                sys.exit(f"[wheelhouse] {w.name} does not install on CPython {PYTHON_VERSION} / Linux")

        unmet = unmet_requirements(wheels)
        if unmet:
            sys.exit(f"[wheelhouse] requirements neither carried nor on the GPU machine: {unmet}")

        manifest = {
            "python": PYTHON_VERSION,
            "wheels": {
                wheel_distribution(w): {
                    "file": w.name,
                    "module": CARRIED[next(d for d in CARRIED if _canonical(d) == wheel_distribution(w))],
                    "sha256": hashlib.sha256(w.read_bytes()).hexdigest(),
                    "bytes": w.stat().st_size,
                }
                for w in wheels
            },
            "expected_on_machine": PRESENT,
        }
        total = sum(w.stat().st_size for w in wheels)
        manifest["total_mb"] = round(total / 2**20, 2)
        tracked = _tracked_mb()
        if max_mb is not None and manifest["total_mb"] + tracked > max_mb:
            sys.exit(f"[wheelhouse] {manifest['total_mb']} MiB of wheels + {tracked:.1f} MiB of "
                     f"tracked files exceed --max-mb {max_mb}")
        (build / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(build, folder)  # whole or not at all: built aside, copied when complete
    print(f"[wheelhouse] {len(wheels)} wheels, {manifest['total_mb']} MiB in {folder} "
          f"(+ {tracked:.1f} MiB of tracked files)")
    return manifest


def _tracked_mb() -> float:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file()) / 2**20


def install(folder: Path, target: Path) -> Dict:
    """Installs the carried distributions this interpreter cannot import yet into ``target``
    (pip --no-index --no-deps) and puts ``target`` first on ``sys.path``. Raises
    RuntimeError, before anything is installed, when the wheelhouse is not one of ours or a
    module expected on the machine is missing. Returns what it found and did."""
    folder, target = Path(folder), Path(target)
    manifest_path = folder / "MANIFEST.json"
    if not manifest_path.exists():
        raise RuntimeError(
            f"{folder} has no MANIFEST.json: build it here with "
            f"'python benchmarks/gpu_wheelhouse.py prepare {folder}' and copy it to the machine with the checkout"
        )
    manifest = json.loads(manifest_path.read_text())
    absent = [d for d, module in PRESENT.items() if importlib.util.find_spec(module) is None]
    if absent:
        raise RuntimeError(f"this machine lacks {absent}, which the wheelhouse does not hold")
    missing = {d: w for d, w in manifest["wheels"].items()
               if importlib.util.find_spec(w["module"]) is None}
    for dist, wheel in missing.items():
        digest = hashlib.sha256((folder / wheel["file"]).read_bytes()).hexdigest()
        if digest != wheel["sha256"]:
            raise RuntimeError(f"{wheel['file']} in {folder} does not match its MANIFEST.json sha256")
    wheels = [folder / w["file"] for w in missing.values()]
    method = None
    if wheels:
        target.mkdir(parents=True, exist_ok=True)
        if importlib.util.find_spec("pip") is not None:
            method = "pip"
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                 "--disable-pip-version-check", "--target", str(target), *map(str, wheels)],
                check=True,
            )
        else:
            method = "unzip"
            for wheel in wheels:
                _unpack(wheel, target)
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
    return {"installed": sorted(missing), "already_present": sorted(set(manifest["wheels"]) - set(missing)),
            "target": str(target), "method": method}


def _unpack(wheel: Path, target: Path) -> None:
    """What ``pip install --target`` does with our wheels, for an interpreter without pip: a
    wheel is a zip of its import tree; of the ``.data`` folders only scripts occur (left out)."""
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            data = name.split("/")[0].endswith(".data")
            if data and name.split("/")[1] != "scripts":
                raise RuntimeError(f"{wheel.name} installs {name}: unpack it with pip")
            if not data:
                z.extract(name, target)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build the wheelhouse here (needs the package index)")
    p.add_argument("folder", type=Path, help="e.g. .gpu_wheelhouse (git-ignored)")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "detectron2",
                   help="install/install_detectron2.py's cache of verified archives and wheels")
    p.add_argument("--max-mb", type=float, default=None,
                   help="stop when the wheels plus the tracked files exceed this many MiB (a size "
                   "budget for copying the checkout and the wheelhouse to the GPU machine)")
    i = sub.add_parser("install", help="install what this interpreter lacks (no network)")
    i.add_argument("folder", type=Path)
    i.add_argument("--target", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.folder, args.cache_dir, args.max_mb)
    else:
        print(json.dumps(install(args.folder, args.target), indent=1))


if __name__ == "__main__":
    main()
