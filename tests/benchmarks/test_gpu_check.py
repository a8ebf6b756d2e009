"""benchmarks/gpu_check.py and benchmarks/gpu_wheelhouse.py on the CPU, so the GPU command cannot rot.

The whole script runs once in its ``--smoke`` mode (tiny sizes, every section) as the device
run would, and its JSON is checked: every section present and ok, every reported equality
holding against its stated tolerance, the speed table filled. A deliberately broken encoder
must turn the equality section to "failed" and the exit status to 1. The wheelhouse installer
is run on a wheel built here, offline.
"""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check")
gpu_wheelhouse = _load("gpu_wheelhouse")


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASKCLIP_CLIP_DOWNLOAD="0")
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--device", "cpu",
         "--smoke", "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(output.read_text()), output.with_suffix(".log").read_text()


def _checks(section):
    return section["checks"].items()


def test_every_section_runs_and_passes(smoke_report):
    report, log = smoke_report
    assert report["ok"] is True
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("traceback"))
        assert f"== {name}" in log and f"-- {name}: ok" in log
    env = report["sections"]["environment"]
    assert env["device"] == "cpu" and env["mode"] == "smoke" and env["torch"] == torch.__version__


def test_reported_equalities_hold(smoke_report):
    report, _ = smoke_report
    equality = report["sections"]["equality"]
    names = set(equality["checks"])
    # both encoder modes (features; rma's masks of every RMA layer) against the CPU and against
    # the dense reference, the text encoder, the proposals, the full tiny model
    tiny_layers = gpu_check.SMOKE.clip == "tiny" and 4
    for mode in ("rma", "mask_tokens"):
        assert f"encoder_{mode}_features" in names
        assert f"encoder_{mode}_dense_reference_features" in names
    assert {f"encoder_rma_masks_{i}" for i in range(tiny_layers)} <= names
    assert {"text_embeddings", "proposal_mask_logits", "proposal_objectness", "proposal_resampling",
            "tiny_model_0_sem_seg", "tiny_model_1_panoptic_pixels"} <= names
    for name, check in _checks(equality):
        assert check["ok"], (name, check)
        if "max_rel" in check:
            assert check["max_rel"] <= check["rtol"]
            assert check["max_abs"] <= check["rtol"] * check["scale"] * (1 + 1e-9)
        else:
            assert check["agreement"] >= check["min"]
    # the dense reference is a different computation: it agrees closely, not trivially
    dense = equality["checks"]["encoder_rma_dense_reference_features"]
    assert 0 < dense["max_rel"] < gpu_check.FP32_RTOL["dense_reference"]

    for name, check in _checks(report["sections"]["autocast"]):
        dtype = name.split("_")[-1]
        assert check["ok"] and check["min_cosine"] >= gpu_check.AUTOCAST_MIN_COSINE[dtype], name
        if name.startswith("rma"):
            assert check["min_mask_agreement"] >= gpu_check.AUTOCAST_MIN_MASK_AGREEMENT[dtype]


def test_sdpa_probe_reports_every_backend(smoke_report):
    report, _ = smoke_report
    sdpa = report["sections"]["sdpa"]
    for run in sdpa["encoder"].values():
        assert run["kernels"] and run["backend"] != "none seen"
    assert len(sdpa["calls"]) == 3 * 3  # three call shapes x float32 / bfloat16 / float16
    for name, call in sdpa["calls"].items():
        assert call["default"]["min_ms"] > 0
        assert call["math"]["runs"] and call["math"]["max_rel_vs_float64"] < 1e-2, name
        # a backend that cannot run says why instead of failing the section
        assert all(entry.get("runs") or entry.get("error") for entry in call.values() if "runs" in entry)


def test_speed_table_is_filled(smoke_report):
    report, _ = smoke_report
    sections = report["sections"]
    for dtype in ("float32", "bfloat16"):
        rows = sections["encoder_speed"][dtype]
        assert set(rows) == {"plain", "mask_tokens", "rma", "baseline", "dense_reference"}
        assert all(r["min_ms"] > 0 and r["median_ms"] >= r["min_ms"] for r in rows.values())
        assert rows["plain"]["x_plain"] == 1.0
        assert sections["inference_speed"][dtype]["min_ms"] > 0
    stage2 = sections["stage2_training"]["float32"]
    assert stage2["amp"] is False and stage2["batch"] == gpu_check.SMOKE.stage2_batch
    assert stage2["ok"] and len(stage2["total_loss"]) >= 1 and stage2["min_s"] > 0
    stage1 = sections["stage1_training"]
    assert stage1["iteration"]["ok"] and stage1["iteration"]["min_s"] > 0
    # one MSDeformAttn call per encoder layer of the tiny pixel decoder
    assert stage1["deformable_attention"]["calls"] == 1
    assert 0 < stage1["deformable_attention"]["share_of_iteration"] < 1
    # docs/BENCHMARKS.md's table rows, filled from the report (AMP columns stay empty on the CPU)
    rows = report["readme_rows"]
    assert len(rows) == 8 and all(row.startswith("| ") for row in rows)
    assert all(" - " not in row for row in rows[1:5] + rows[7:])


def test_a_broken_encoder_fails_the_equality_section(tmp_path, monkeypatch):
    """Mask class tokens that see every patch (Eq. 2 ignored): the dense reference disagrees,
    the section is "failed" and the command exits 1."""
    from maskclip_d2.modeling import MaskCLIPVisualEncoder

    def sees_everything(self, mask_logits):
        B, M = mask_logits.shape[:2]
        patches = (self.input_resolution // self.patch_size) ** 2
        return torch.ones(B, 1, M, 1 + patches, dtype=torch.bool, device=mask_logits.device)

    monkeypatch.setattr(MaskCLIPVisualEncoder, "_mask_attention", sees_everything)
    output = tmp_path / "broken.json"
    status = gpu_check.main(["--device", "cpu", "--smoke", "--sections", "equality",
                             "--output", str(output)])
    report = json.loads(output.read_text())
    assert status == 1 and report["ok"] is False
    equality = report["sections"]["equality"]
    assert equality["status"] == "failed"
    assert not equality["checks"]["encoder_mask_tokens_dense_reference_features"]["ok"]


def test_compare_states_its_tolerance():
    a = torch.tensor([1.0, -2.0, 4.0])
    assert gpu_check.compare(a, a.clone(), 1e-6)["ok"]
    off = gpu_check.compare(a + torch.tensor([0.0, 0.0, 1e-3]), a, 1e-4)
    assert not off["ok"] and off["max_rel"] == pytest.approx(1e-3 / 4, rel=1e-4)  # float32 4.001
    assert not gpu_check.compare(torch.tensor([float("nan")]), torch.tensor([1.0]), 1.0)["ok"]
    assert "shapes differ" in gpu_check.compare(a[:2], a, 1.0)["reason"]


def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


# ---- the wheelhouse --------------------------------------------------------------------------


def test_wheel_tags_for_the_gpu_machine():
    fits = gpu_wheelhouse.installs_on_target
    assert fits("fvcore-0.1.5.post20221221-py3-none-any.whl")
    assert fits("regex-2026.11.19-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert fits("pycocotools-2.0.11-cp312-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert not fits("regex-2026.11.19-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert not fits("regex-2026.11.19-cp312-cp312-macosx_11_0_arm64.whl")
    assert not fits("futures-3.0.5-py2-none-any.whl")


def _tiny_wheel(folder, dist, module, version="1.0", requires=()):
    """A minimal valid pure-Python wheel defining ``module.VALUE = 42``."""
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", metadata)
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_requirements_neither_carried_nor_present_are_found(tmp_path):
    wheel = _tiny_wheel(tmp_path, "probe", "probe", requires=[
        "numpy>=1.24",  # on the GPU machine
        "fvcore",  # carried
        "futures; python_version < '3.0'",  # not for Python 3.12
        "sphinx; extra == 'docs'",  # an extra nobody asks for
        "somethingelse>=1",
    ])
    assert gpu_wheelhouse.unmet_requirements([wheel]) == {"probe": ["somethingelse"]}


def test_install_adds_only_what_is_missing(tmp_path, monkeypatch):
    import hashlib

    house = tmp_path / "house"
    house.mkdir()
    wheel = _tiny_wheel(house, "maskclip_gpu_check_probe", "maskclip_gpu_check_probe")
    manifest = {"python": "3.12", "wheels": {
        "maskclip-gpu-check-probe": {"file": wheel.name, "module": "maskclip_gpu_check_probe",
                                     "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
        "fvcore": {"file": "fvcore-absent.whl", "module": "fvcore", "sha256": "unused"},
    }}
    (house / "MANIFEST.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = gpu_wheelhouse.install(str(house), str(tmp_path / "site"))  # as gpu_check passes them
    assert result["installed"] == ["maskclip-gpu-check-probe"] and result["method"] == "pip"
    assert result["already_present"] == ["fvcore"]  # importable here: not installed again
    assert sys.path[0] == str(tmp_path / "site")
    import maskclip_gpu_check_probe

    assert maskclip_gpu_check_probe.VALUE == 42
    sys.modules.pop("maskclip_gpu_check_probe")


def test_install_without_pip_unpacks_the_wheels(tmp_path, monkeypatch):
    import hashlib

    wheel = _tiny_wheel(tmp_path, "maskclip_gpu_check_probe3", "maskclip_gpu_check_probe3")
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"wheels": {"probe3": {
        "file": wheel.name, "module": "maskclip_gpu_check_probe3",
        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}}}))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else find_spec(name, *a))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert gpu_wheelhouse.install(tmp_path, tmp_path / "site")["method"] == "unzip"
    import maskclip_gpu_check_probe3

    assert maskclip_gpu_check_probe3.VALUE == 42
    sys.modules.pop("maskclip_gpu_check_probe3")


def test_install_refuses_a_foreign_or_tampered_wheelhouse(tmp_path):
    with pytest.raises(RuntimeError, match="MANIFEST.json.*prepare"):
        gpu_wheelhouse.install(tmp_path, tmp_path / "site")
    wheel = _tiny_wheel(tmp_path, "maskclip_gpu_check_probe2", "maskclip_gpu_check_probe2")
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"wheels": {"probe2": {
        "file": wheel.name, "module": "maskclip_gpu_check_probe2", "sha256": "0" * 64}}}))
    with pytest.raises(RuntimeError, match="sha256"):
        gpu_wheelhouse.install(tmp_path, tmp_path / "site")
    assert not (tmp_path / "site").exists()
