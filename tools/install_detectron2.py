#!/usr/bin/env python
"""Provision detectron2 for maskclip-d2, offline except for PyPI.

Order (README, "detectron2"):
  a. a detectron2 that already imports with the APIs maskclip-d2 uses is kept (an upstream build
     from source, or this script's own build of the current patch series);
  b. users who can reach GitHub install upstream detectron2 themselves first, and (a) keeps it:
     this script never contacts GitHub or any address other than the package index pip uses;
  c. otherwise: the PyPI sdist `pb1-detectron2==0.6` (upstream v0.6's Python files), checked
     against its sha256, patched with `tools/detectron2_patches/*.patch` for today's NumPy,
     Pillow, PyTorch and Python, and built into a pure-Python wheel named `detectron2` whose
     version says it was patched (`pip show detectron2`). The compiled `detectron2._C` ops are
     replaced by PyTorch / torchvision code (see the patches).

Usage: python tools/install_detectron2.py [--force] [--cache-dir DIR]
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATCH_DIR = REPO / "tools" / "detectron2_patches"
SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# Local version label of our build: "0.6+maskclip.patched.<hash of the patch series>".
LOCAL_LABEL = "maskclip.patched"
# Runtime requirements of detectron2 v0.6's Python code (the wheel declares them; the pinned
# versions come from maskclip-d2's requirements.txt).
WHEEL_REQUIRES = [
    "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8",
    "tabulate", "cloudpickle", "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7", "omegaconf>=2.1", "hydra-core>=1.1",
]

# A detectron2 is "usable" when this runs: the modules maskclip-d2 imports, plus calls that hit
# the known breakages of upstream v0.6 on today's stack (NumPy aliases, Pillow constants).
PROBE = r"""
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


def series_id():
    """Hash of the patch series: changes whenever a patch changes."""
    h = hashlib.sha256()
    for p in sorted(PATCH_DIR.glob("*.patch")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


def wanted_version():
    return f"{SDIST_VERSION}+{LOCAL_LABEL}.{series_id()}"


def probe_installed():
    """Version string of a usable installed detectron2, or None."""
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"[detectron2] no usable detectron2 installed ({last})")
        return None
    return r.stdout.strip().splitlines()[-1]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_sdist(cache_dir):
    """The verified sdist, from the cache or from the package index through pip."""
    path = cache_dir / SDIST_FILE
    if not path.exists():
        print(f"[detectron2] fetching {SDIST_NAME}=={SDIST_VERSION} from the package index")
        with tempfile.TemporaryDirectory() as tmp:
            # --no-build-isolation: pip prepares the sdist's metadata by running its setup.py,
            # which imports torch (already installed in this environment).
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--no-build-isolation", "--quiet", "--dest", tmp,
                 f"{SDIST_NAME}=={SDIST_VERSION}"],
                check=True,
            )
            shutil.move(os.path.join(tmp, SDIST_FILE), path)
    digest = sha256_of(path)
    if digest != SDIST_SHA256:
        path.unlink()
        sys.exit(
            f"[detectron2] {SDIST_FILE} has sha256 {digest}, expected {SDIST_SHA256}: "
            "refusing to build it (the file was removed; re-run to fetch it again)."
        )
    return path


def _safe_members(tar, prefix):
    """Members under `prefix` only, refusing absolute paths, '..' and links."""
    for m in tar.getmembers():
        name = m.name.split("/", 1)[1] if "/" in m.name else ""
        if not name.startswith(prefix):
            continue
        if m.issym() or m.islnk() or name.startswith("/") or ".." in Path(name).parts:
            raise RuntimeError(f"unsafe path in {SDIST_FILE}: {m.name}")
        m.name = name
        yield m


def build_wheel(sdist, workdir, wheel_dir):
    src = workdir / "src"
    src.mkdir()
    with tarfile.open(sdist) as tar:
        for prefix in ("detectron2/", "projects/"):
            tar.extractall(src, members=list(_safe_members(tar, prefix)), filter="data")
    for patch in sorted(PATCH_DIR.glob("*.patch")):
        print(f"[detectron2] applying {patch.name}")
        subprocess.run(
            ["patch", "-p1", "--forward", "--batch", "--quiet", "-i", str(patch)],
            cwd=src, check=True,
        )
    version = wanted_version()
    (src / "detectron2" / "__init__.py").write_text(
        (src / "detectron2" / "__init__.py").read_text().replace(
            f'__version__ = "{SDIST_VERSION}"', f'__version__ = "{version}"'
        )
    )
    projects = {
        "detectron2.projects.point_rend": "projects/PointRend/point_rend",
        "detectron2.projects.deeplab": "projects/DeepLab/deeplab",
        "detectron2.projects.panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
    }
    (src / "setup.py").write_text(
        "from setuptools import find_packages, setup\n"
        f"PROJECTS = {projects!r}\n"
        "setup(\n"
        "    name='detectron2',\n"
        f"    version={version!r},\n"
        "    description='detectron2 v0.6 (from the pb1-detectron2 sdist), patched by "
        "maskclip-d2 for today\\'s NumPy, Pillow, PyTorch and Python; no compiled ops',\n"
        "    url='https://github.com/facebookresearch/detectron2',\n"
        "    license='Apache-2.0',\n"
        "    packages=find_packages(include=['detectron2', 'detectron2.*'])"
        " + list(PROJECTS),\n"
        "    package_dir=PROJECTS,\n"
        "    package_data={'detectron2.model_zoo': ['configs/**/*.yaml', 'configs/**/*.py']},\n"
        "    python_requires='>=3.8',\n"
        f"    install_requires={WHEEL_REQUIRES!r},\n"
        ")\n"
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(wheel_dir), str(src)],
        check=True,
    )
    wheels = sorted(wheel_dir.glob(f"detectron2-{version}-*.whl"))
    if not wheels:
        sys.exit(f"[detectron2] pip wheel produced no detectron2-{version} wheel in {wheel_dir}")
    return wheels[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if one is usable")
    parser.add_argument(
        "--cache-dir", default=str(REPO / ".cache" / "detectron2"),
        help="where the verified sdist and built wheels are kept",
    )
    args = parser.parse_args()

    installed = None if args.force else probe_installed()
    if installed is not None:
        ours = f"+{LOCAL_LABEL}." in installed
        if not ours or installed == wanted_version():
            print(f"[detectron2] keeping the installed detectron2 {installed}")
            return
        print(f"[detectron2] installed {installed} is an older patch series: rebuilding")

    cache_dir = Path(args.cache_dir)
    wheel_dir = cache_dir / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob(f"detectron2-{wanted_version()}-*.whl"))
    if wheels and not args.force:
        wheel = wheels[-1]
    else:
        sdist = fetch_sdist(cache_dir)
        with tempfile.TemporaryDirectory() as tmp:
            wheel = build_wheel(sdist, Path(tmp), wheel_dir)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--quiet",
         str(wheel)],
        check=True,
    )
    installed = probe_installed()
    if installed != wanted_version():
        sys.exit(f"[detectron2] the built detectron2 does not pass the import probe ({installed})")
    print(f"[detectron2] installed detectron2 {installed} from {wheel.name}")


if __name__ == "__main__":
    main()
