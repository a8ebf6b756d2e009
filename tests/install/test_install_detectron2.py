"""The environment `make setup` builds: the provisioned detectron2 and its patch series."""
import io
import subprocess
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

from helpers.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
install_detectron2 = load_script("install/install_detectron2.py")


PACKAGES = [install_detectron2.DETECTRON2, install_detectron2.LVIS]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_installed_package_is_current_patch_series_or_a_users_build(package):
    version = metadata.version(package.name)
    if "+maskclip.patched." in version:
        # our offline build: it must be the patch series that is in the repository now
        assert version == package.wanted_version()
        assert "patched" in metadata.metadata(package.name)["Summary"]
    if package.name == "detectron2":
        import detectron2

        assert detectron2.__version__ == version


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_probe_accepts_the_installed_package(package):
    assert install_detectron2.probe_installed(package) == metadata.version(package.name)


def test_series_id_changes_with_the_patches(tmp_path):
    import dataclasses

    (tmp_path / "0001-a.patch").write_text("one\n")
    package = dataclasses.replace(install_detectron2.DETECTRON2, patch_dir=tmp_path)
    first = package.series_id()
    (tmp_path / "0001-a.patch").write_text("two\n")
    assert package.series_id() != first
    assert package.wanted_version().startswith("0.6+maskclip.patched.")


def _tar_with(names):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    buffer.seek(0)
    return tarfile.open(fileobj=buffer)


def test_sdist_extraction_takes_only_the_package_and_refuses_escaping_paths():
    tar = _tar_with(["pb1-detectron2-0.6/detectron2/a.py", "pb1-detectron2-0.6/setup.py"])
    names = [m.name for m in install_detectron2._safe_members(tar, "detectron2/")]
    assert names == ["detectron2/a.py"]
    tar = _tar_with(["pb1-detectron2-0.6/detectron2/../../evil.py"])
    with pytest.raises(RuntimeError, match="unsafe path"):
        list(install_detectron2._safe_members(tar, "detectron2/"))


def test_bad_archive_checksum_is_refused(tmp_path):
    fake = tmp_path / install_detectron2.DETECTRON2.archive
    fake.write_bytes(b"not the real sdist")
    with pytest.raises(SystemExit, match="expected 5d2e9e51"):
        install_detectron2.fetch_archive(install_detectron2.DETECTRON2, tmp_path)
    assert not fake.exists()  # removed, so a re-run fetches it again


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_every_patch_touches_only_its_package(package):
    patches = sorted(package.patch_dir.glob("*.patch"))
    assert patches
    for patch in patches:
        touched = [line.split()[1] for line in patch.read_text().splitlines() if line.startswith("+++ ")]
        assert touched and all(t.startswith(f"b/{package.name}/") for t in touched), patch.name


def test_setup_rerun_skips_installs():
    # `make test` has just run the set-up; a re-run must find everything up to date
    for _ in range(2):
        r = subprocess.run(["bash", "install/bootstrap.sh"], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr
    assert "environment up to date" in r.stdout
    assert "installing" not in r.stdout
