"""Test-wide settings: tests never download anything (CLIP weights included)."""
import os

# Set at import, before any test runs: load_clip then fails at once instead of downloading
# OpenAI's CLIP files. Tests that exercise the download path patch the downloader.
os.environ["MASKCLIP_CLIP_DOWNLOAD"] = "0"
# OpenCLIP's hub-hosted weights: huggingface_hub never goes online either (read at its import).
os.environ["HF_HUB_OFFLINE"] = "1"
