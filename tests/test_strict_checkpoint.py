"""A checkpoint that does not match the model is refused, naming the keys."""
import pytest
import torch
from torch import nn

from maskclip_d2.checkpoint import CheckpointMismatchError, StrictCheckpointer


def two_layers(width=3):
    return nn.Sequential(nn.Linear(width, 2), nn.Linear(2, 2))


def test_matching_checkpoint_loads(tmp_path):
    source = two_layers()
    torch.save({"model": source.state_dict()}, tmp_path / "ok.pth")
    target = two_layers()
    StrictCheckpointer(target).load(str(tmp_path / "ok.pth"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


@pytest.mark.parametrize(
    "state, message",
    [
        (lambda: {"0.weight": torch.zeros(2, 3), "0.bias": torch.zeros(2)}, "2 keys missing from the checkpoint: 1.weight, 1.bias"),
        (lambda: {**two_layers().state_dict(), "2.weight": torch.zeros(1)}, "1 keys unknown to the model: 2.weight"),
        (lambda: two_layers(width=5).state_dict(), "1 keys of another shape: 0.weight (2, 5) vs model (2, 3)"),
    ],
    ids=["missing", "unknown", "shape"],
)
def test_mismatching_checkpoint_is_refused(tmp_path, state, message):
    torch.save({"model": state()}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="does not match the model") as err:
        StrictCheckpointer(two_layers()).load(str(tmp_path / "bad.pth"))
    assert message in str(err.value)
