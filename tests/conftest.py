"""Test-wide settings: tests never download anything (CLIP weights included)."""
import os

# Set at import, before any test runs: load_clip then fails at once instead of downloading
# OpenAI's CLIP files. Tests that exercise the download path patch the downloader.
os.environ["MASKCLIP_CLIP_DOWNLOAD"] = "0"
# OpenCLIP's hub-hosted weights: huggingface_hub never goes online either (read at its import).
os.environ["HF_HUB_OFFLINE"] = "1"

# setuptools first: Detectron2's default_setup (collect_env_info) imports
# torch.utils.cpp_extension, which imports setuptools, whose distutils shim asserts that
# setuptools' own distutils loads. After a test has installed wheels into a folder put on
# sys.path in-process (tests/benchmarks/test_gpu_check.py, as gpu_check does on a GPU
# machine), that shim falls back to the standard library's distutils and the assertion fails
# in every later training test. Imported once here, before any test, setuptools keeps its own.
import setuptools  # noqa: E402, F401
