"""Where CLIP weights come from, for both families (OpenAI's ``clip`` and OpenCLIP): the cache
folder, the switch that allows or refuses downloads, and reading a checkpoint file safely.
"""
import os
import warnings
import zipfile
from typing import Dict, Optional

import torch

__all__ = [
    "CACHE_ENV", "DOWNLOAD_ENV", "DEFAULT_CACHE_DIR", "NON_WEIGHT_KEYS", "download_refusal",
    "read_state_dict",
]

CACHE_ENV = "MASKCLIP_CLIP_CACHE"
DOWNLOAD_ENV = "MASKCLIP_CLIP_DOWNLOAD"
DEFAULT_CACHE_DIR = "~/.cache/clip"
_FALSE_WORDS = ("0", "false", "no", "off")

# Entries that OpenAI's TorchScript archives hold besides the weights; clip.model.build_model
# drops them before loading.
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


def download_refusal(download: Optional[bool]) -> Optional[str]:
    """None if a missing weights file may be downloaded, else what to do to allow it.

    ``download`` None: allowed unless ``$MASKCLIP_CLIP_DOWNLOAD`` is 0, false, no or off;
    True / False override that variable."""
    if download is None:
        if os.environ.get(DOWNLOAD_ENV, "").strip().lower() in _FALSE_WORDS:
            return f"allow downloads (unset {DOWNLOAD_ENV}={os.environ[DOWNLOAD_ENV]})"
        return None
    return None if download else "allow downloads (download=True)"


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a CLIP checkpoint: an official TorchScript archive or a torch.save file.

    Checkpoints are untrusted input. Plain files are read with ``weights_only=True``, which
    only rebuilds tensors and containers. TorchScript archives are read with
    ``torch.jit.load``, whose unpickler is TorchScript's restricted one: it does not execute
    pickled Python code.
    """
    if zipfile.is_zipfile(path):  # TorchScript archives and torch.save files (since 1.6)
        try:
            with warnings.catch_warnings():
                # OpenAI publishes TorchScript only, so its deprecation is no news to users.
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
                return dict(torch.jit.load(path, map_location="cpu").state_dict())
        except RuntimeError:
            pass  # not TorchScript: a torch.save zip, or damaged
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"Could not read CLIP weights from {path}: it is neither a TorchScript archive nor "
            f"a file that torch.load(weights_only=True) reads ({type(err).__name__}). If the "
            f"file is damaged, delete it and fetch it again."
        ) from err

    for wrapper_key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper_key), dict):
            checkpoint = checkpoint[wrapper_key]
            break
    if not isinstance(checkpoint, dict) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise ValueError(
            f"{path} does not hold a CLIP state dict: expected a dict of tensors (optionally "
            f"under a 'state_dict' or 'model' key), got {type(checkpoint).__name__}"
        )
    return checkpoint
