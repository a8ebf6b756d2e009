#!/usr/bin/env python
"""Provision detectron2 (and the LVIS API its LVISEvaluator calls), offline except for PyPI.

Order (docs/INSTALL.md):
  a. a detectron2 that already imports with the APIs maskclip-d2 uses is kept (an upstream build
     from source, or this script's own build of the current patch series);
  b. users who can reach GitHub install upstream detectron2 themselves first, and (a) keeps it:
     this script never contacts GitHub or any address other than the package index pip uses;
  c. otherwise: the PyPI sdist `pb1-detectron2==0.6` (upstream v0.6's Python files), checked
     against its sha256, patched with `install/patches/detectron2/*.patch` for today's NumPy,
     Pillow, PyTorch and Python, and built into a pure-Python wheel named `detectron2` whose
     version says it was patched (`pip show detectron2`). The compiled `detectron2._C` ops are
     replaced by PyTorch / torchvision code (see the patches).
The same is done for `lvis==0.5.3` (`install/patches/lvis/`: NumPy >= 1.24 aliases in its
evaluation), unless the installed lvis already evaluates under today's NumPy.

Usage: python install/install_detectron2.py [--force] [--cache-dir DIR] [--print-wheels]
"""
import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
# Local version label of our builds: "<version>+maskclip.patched.<hash of the patch series>".
LOCAL_LABEL = "maskclip.patched"


@dataclasses.dataclass(frozen=True)
class PatchedPackage:
    """A pure-Python package rebuilt from a verified PyPI archive plus a patch series."""

    name: str  # distribution name of the wheel we build
    requirement: str  # what pip downloads
    archive: str  # file pip saves
    sha256: str  # of that file
    base_version: str
    is_sdist: bool  # sdist (fetched with --no-binary) or wheel
    prefixes: Tuple[str, ...]  # archive folders copied into the build tree
    patch_dir: Path
    packages_expr: str  # setup.py expression listing the packages
    package_dir: Dict[str, str]
    package_data: Dict[str, List[str]]
    install_requires: Tuple[str, ...]
    description: str
    probe: str  # Python code that succeeds iff an installed copy is usable; prints the version

    def series_id(self) -> str:
        """Hash of the patch series: changes whenever a patch changes."""
        h = hashlib.sha256()
        for p in sorted(self.patch_dir.glob("*.patch")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        return h.hexdigest()[:10]

    def wanted_version(self) -> str:
        return f"{self.base_version}+{LOCAL_LABEL}.{self.series_id()}"


# A detectron2 is "usable" when this runs: the modules maskclip-d2 imports, plus calls that hit
# the known breakages of upstream v0.6 on today's stack (NumPy aliases, Pillow constants).
DETECTRON2_PROBE = r"""
import numpy as np
import detectron2
from detectron2.config import configurable, get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, launch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.evaluation import (COCOEvaluator, COCOPanopticEvaluator, LVISEvaluator,
                                   SemSegEvaluator)
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.projects.point_rend.point_features import point_sample
from detectron2.structures.masks import polygons_to_bitmask
from detectron2.utils.visualizer import Visualizer
from detectron2.layers import DeformConv
assert polygons_to_bitmask([np.array([0.0, 0.0, 4.0, 0.0, 4.0, 4.0])], 4, 4).dtype == bool
print(detectron2.__version__)
"""

# lvis is usable when its evaluation code names no NumPy alias removed in NumPy 1.24.
LVIS_PROBE = r"""
import inspect, re
from importlib import metadata
import lvis.eval
assert not re.search(r"np\.(float|int|bool|object)\b(?!\d|_)", inspect.getsource(lvis.eval))
print(metadata.version("lvis"))
"""

DETECTRON2 = PatchedPackage(
    name="detectron2",
    requirement="pb1-detectron2==0.6",
    archive="pb1-detectron2-0.6.tar.gz",
    sha256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29",
    base_version="0.6",
    is_sdist=True,
    prefixes=("detectron2/", "projects/"),
    patch_dir=REPO / "install" / "patches" / "detectron2",
    packages_expr="find_packages(include=['detectron2', 'detectron2.*']) + list(PACKAGE_DIR)",
    package_dir={
        "detectron2.projects.point_rend": "projects/PointRend/point_rend",
        "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
        "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
    },
    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
    # upstream v0.6's runtime requirements, minus caffe2's and the formatter's
    install_requires=(
        "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8",
        "tabulate", "cloudpickle", "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7", "omegaconf>=2.1", "hydra-core>=1.1",
    ),
    description="detectron2 v0.6 (from the pb1-detectron2 sdist), patched by maskclip-d2 for "
    "today's NumPy, Pillow, PyTorch and Python; no compiled ops",
    probe=DETECTRON2_PROBE,
)

LVIS = PatchedPackage(
    name="lvis",
    requirement="lvis==0.5.3",
    archive="lvis-0.5.3-py3-none-any.whl",
    sha256="4f07153330df342b3161fafb46641ce7c02864113a8ddf0d6ffab6b02407bef0",
    base_version="0.5.3",
    is_sdist=False,
    prefixes=("lvis/",),
    patch_dir=REPO / "install" / "patches" / "lvis",
    packages_expr="['lvis']",
    package_dir={},
    package_data={},
    install_requires=("matplotlib", "numpy", "opencv-python", "pycocotools"),
    description="LVIS API 0.5.3, patched by maskclip-d2 for NumPy >= 1.24",
    probe=LVIS_PROBE,
)


def probe_installed(package: PatchedPackage):
    """Version string of a usable installed copy, or None."""
    r = subprocess.run([sys.executable, "-c", package.probe], capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"[{package.name}] no usable {package.name} installed ({last})")
        return None
    return r.stdout.strip().splitlines()[-1]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_archive(package: PatchedPackage, cache_dir: Path) -> Path:
    """The verified archive, from the cache or from the package index through pip."""
    path = cache_dir / package.archive
    if not path.exists():
        print(f"[{package.name}] fetching {package.requirement} from the package index")
        kind = ["--no-binary", ":all:"] if package.is_sdist else ["--only-binary", ":all:"]
        with tempfile.TemporaryDirectory() as tmp:
            # --no-build-isolation: pip prepares an sdist's metadata by running its setup.py,
            # which (for detectron2) imports torch, already installed in this environment.
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", *kind,
                 "--no-build-isolation", "--quiet", "--dest", tmp, package.requirement],
                check=True,
            )
            shutil.move(os.path.join(tmp, package.archive), path)
    digest = sha256_of(path)
    if digest != package.sha256:
        path.unlink()
        sys.exit(
            f"[{package.name}] {package.archive} has sha256 {digest}, expected {package.sha256}: "
            "refusing to build it (the file was removed; re-run to fetch it again)."
        )
    return path


def _check_member(name: str, is_link: bool, archive: str) -> None:
    if is_link or name.startswith("/") or ".." in Path(name).parts:
        raise RuntimeError(f"unsafe path in {archive}: {name}")


def _safe_members(tar, prefixes):
    """sdist members under one of ``prefixes`` (after the top folder), refusing absolute paths,
    '..' and links; their names are rewritten without the top folder."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    for m in tar.getmembers():
        name = m.name.split("/", 1)[1] if "/" in m.name else ""
        if not name.startswith(prefixes):
            continue
        _check_member(name, m.issym() or m.islnk(), m.name)
        m.name = name
        yield m


def extract(package: PatchedPackage, archive: Path, dest: Path) -> None:
    if package.is_sdist:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, members=list(_safe_members(tar, package.prefixes)), filter="data")
        return
    with zipfile.ZipFile(archive) as wheel:
        for name in wheel.namelist():
            if name.startswith(package.prefixes) and not name.endswith("/"):
                _check_member(name, False, archive.name)
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(name))


def build_wheel(package: PatchedPackage, archive: Path, workdir: Path, wheel_dir: Path) -> Path:
    src = workdir / "src"
    src.mkdir()
    extract(package, archive, src)
    for patch in sorted(package.patch_dir.glob("*.patch")):
        print(f"[{package.name}] applying {patch.name}")
        subprocess.run(
            ["patch", "-p1", "--forward", "--batch", "--quiet", "-i", str(patch)],
            cwd=src, check=True,
        )
    version = package.wanted_version()
    init = src / package.name / "__init__.py"
    text = init.read_text()
    old = f'__version__ = "{package.base_version}"'
    init.write_text(text.replace(old, f'__version__ = "{version}"') if old in text
                    else text + f'\n__version__ = "{version}"\n')
    (src / "setup.py").write_text(
        "from setuptools import find_packages, setup\n"
        f"PACKAGE_DIR = {package.package_dir!r}\n"
        "setup(\n"
        f"    name={package.name!r},\n"
        f"    version={version!r},\n"
        f"    description={package.description!r},\n"
        f"    packages={package.packages_expr},\n"
        "    package_dir=PACKAGE_DIR,\n"
        f"    package_data={package.package_data!r},\n"
        "    python_requires='>=3.8',\n"
        f"    install_requires={list(package.install_requires)!r},\n"
        ")\n"
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(wheel_dir), str(src)],
        check=True,
    )
    wheels = sorted(wheel_dir.glob(f"{package.name}-{version}-*.whl"))
    if not wheels:
        sys.exit(f"[{package.name}] pip wheel produced no {package.name}-{version} wheel")
    return wheels[-1]


def wheel_for(package: PatchedPackage, cache_dir: Path, force: bool = False) -> Path:
    """Our patched wheel of ``package``: the one cached in ``cache_dir/wheels``, else built now
    (also what benchmarks/gpu_wheelhouse.py puts in a GPU machine's wheelhouse)."""
    wheel_dir = cache_dir / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob(f"{package.name}-{package.wanted_version()}-*.whl"))
    if wheels and not force:
        return wheels[-1]
    archive = fetch_archive(package, cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        return build_wheel(package, archive, Path(tmp), wheel_dir)


def provision(package: PatchedPackage, cache_dir: Path, force: bool) -> None:
    installed = None if force else probe_installed(package)
    if installed is not None:
        ours = f"+{LOCAL_LABEL}." in installed
        if not ours or installed == package.wanted_version():
            print(f"[{package.name}] keeping the installed {package.name} {installed}")
            return
        print(f"[{package.name}] installed {installed} is an older patch series: rebuilding")

    wheel = wheel_for(package, cache_dir, force)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--quiet",
         str(wheel)],
        check=True,
    )
    installed = probe_installed(package)
    if installed != package.wanted_version():
        sys.exit(f"[{package.name}] the built {package.name} does not pass the probe ({installed})")
    print(f"[{package.name}] installed {package.name} {installed} from {wheel.name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if one is usable")
    parser.add_argument(
        "--cache-dir", default=str(REPO / ".cache" / "detectron2"),
        help="where the verified archives and built wheels are kept",
    )
    parser.add_argument(
        "--print-wheels", action="store_true",
        help="install nothing: build (or take from the cache) the patched wheels and print their "
        "paths, one a line (what benchmarks/gpu_wheelhouse.py puts in a wheelhouse)",
    )
    args = parser.parse_args()
    if args.print_wheels:
        for package in (DETECTRON2, LVIS):
            print(wheel_for(package, Path(args.cache_dir), args.force))
        return
    for package in (DETECTRON2, LVIS):
        provision(package, Path(args.cache_dir), args.force)


if __name__ == "__main__":
    main()
