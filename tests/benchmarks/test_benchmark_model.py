"""benchmarks/benchmark_model.py on the tiny config: every process it starts answers (an
exported graph through ONNX Runtime too), the one-run tables compare the dtypes and backends,
and the memory figures are consistent (the bounds' recording forward and the checkpoint sizes
are measured outside the timed forwards)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tiny_benchmark_prints_the_dtype_table_and_consistent_memory(tmp_path):
    out = tmp_path / "benchmark.json"
    graph = tmp_path / "tiny.onnx"
    export = subprocess.run(
        [sys.executable, str(REPO / "tools/export_onnx.py"), "--config-file", str(REPO / "configs/tiny/maskclip_tiny.yaml"),
         "--output", str(graph), "--no-check"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/benchmark_model.py"), "--config-file",
         str(REPO / "configs/tiny/maskclip_tiny.yaml"), "--no-training", "--no-kernels", "--threads", "1",
         "--repeats", "1", "--image-size", "96", "128", "--classes", "5", "--variants", "ours",
         "--dtypes", "float32", "bfloat16", "--onnx", str(graph), "--json", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    ours = results["inference"]["ours"]
    assert set(ours["dtypes"]) == {"float32", "bfloat16"}
    bounds = ours["dtypes"]["bfloat16"]["bounds"]
    assert bounds["mask_feature_cosine_min"] >= 0.999 and bounds["masks"] == 10
    assert "bounds" not in ours["dtypes"]["float32"]  # the reference of the bounds
    peaks = [d["inference_peak_rss_gb"] for d in ours["dtypes"].values()]
    # the process's peak covers the build, the warm-ups and every timed forward
    assert all(ours["peak_rss_gb"] >= x for x in (ours["build_peak_rss_gb"], ours["warmup_peak_rss_gb"], *peaks))
    assert ours["build_peak_rss_gb"] <= ours["warmup_peak_rss_gb"]
    assert ours["rss_before_inference_gb"] <= ours["peak_rss_gb"]
    assert 0 < results["checkpoint"]["checkpoint_mb"] < results["checkpoint"]["full_checkpoint_mb"]
    assert "| bfloat16 | " in run.stdout and "bfloat16 vs float32: mask-feature cosine" in run.stdout
    onnx = results["onnx"][str(graph)]  # the exported graph timed by ONNX Runtime, in the same table
    assert onnx["total_s"] > 0 and onnx["graph_s"] > 0 and onnx["graph_mb"] > 1
    assert "| ONNX Runtime | float32 | " in run.stdout and "| PyTorch | bfloat16 | " in run.stdout
