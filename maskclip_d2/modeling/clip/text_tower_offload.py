"""Embed, then offload: CLIP's text tower kept in a memory-mapped file between embeddings
(MODEL.CLIP.OFFLOAD_TEXT_TOWER).

The text tower only runs when a new vocabulary is embedded, yet its weights (0.49 GB at
ViT-L/14@336px, float32) would stay resident for the life of a Predictor. Offloaded, they
are written once to a temporary file and the tower's tensors become read-only memory maps
of it: a page is resident only while it is read, and after each embedding the tensors are
mapped afresh, which gives the pages back. The values are the same bits (float32 stays
float32), so the embeddings do not change; a later vocabulary reads the weights from the
file (the page cache, usually) instead of memory.
"""
import os
import tempfile
import weakref
from typing import Dict, Optional

import torch
from torch import nn

__all__ = ["TowerFile"]


class TowerFile:
    """The weights of ``module`` (a CPU-resident, frozen module) in a temporary file that its
    tensors map. ``remap()`` maps them afresh (giving back the pages read since), ``close()``
    (or the object's collection) removes the file."""

    def __init__(self, module: nn.Module, directory: Optional[str] = None):
        tensors = self._tensors(module)
        if any(t.device.type != "cpu" for t in tensors.values()):
            raise ValueError("only a tower on the CPU can be offloaded to a file")
        handle, self.path = tempfile.mkstemp(prefix="maskclip_text_tower_", suffix=".pt", dir=directory)
        os.close(handle)
        self._finalizer = weakref.finalize(self, _remove, self.path)
        try:
            torch.save({name: t.detach().contiguous() for name, t in tensors.items()}, self.path)
        except BaseException:
            self.close()
            raise
        self.dtypes = {name: t.dtype for name, t in tensors.items()}

    @staticmethod
    def _tensors(module: nn.Module) -> Dict[str, torch.Tensor]:
        tensors = dict(module.named_parameters())
        tensors.update((n, b) for n, b in module.named_buffers() if b is not None)
        return tensors

    def matches(self, module: nn.Module) -> bool:
        """Whether the file still holds ``module``'s tensors as they are typed and placed."""
        tensors = self._tensors(module)
        return tensors.keys() == self.dtypes.keys() and all(
            t.dtype == self.dtypes[n] and t.device.type == "cpu" for n, t in tensors.items()
        )

    def remap(self, module: nn.Module) -> None:
        """Replaces ``module``'s tensors by fresh maps of the file (the old ones, and any page
        they made resident, are released once nothing else holds them)."""
        state = torch.load(self.path, mmap=True, weights_only=True, map_location="cpu")
        for name, value in state.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            if leaf in owner._parameters:
                owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
            else:
                owner._buffers[leaf] = value

    def close(self) -> None:
        self._finalizer()

    def __deepcopy__(self, memo):
        """A copied module does not share the file (whose life is this object's): its copied
        tensors are its own, and its next offload writes its own file."""
        return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
