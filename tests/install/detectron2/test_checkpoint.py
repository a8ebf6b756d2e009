"""DetectionCheckpointer writes a checkpoint whole or not at all, and loads it back."""
import os

import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer


def test_interrupted_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    checkpointer = DetectionCheckpointer(model, str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000009")
    good = (tmp_path / "model_0000009.pth").read_bytes()

    real_save = torch.save

    def save_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # half of the file is on disk when the "crash" comes
            handle.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000019")
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert (tmp_path / "model_0000009.pth").read_bytes() == good
    with torch.no_grad():
        model.weight.zero_()
    DetectionCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert model.weight.abs().sum() > 0  # the complete checkpoint was loaded back
