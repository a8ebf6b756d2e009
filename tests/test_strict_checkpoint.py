"""A checkpoint that does not match the model is refused, naming the keys; MaskCLIP's
checkpoints leave out the frozen weights its config names."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from maskclip_d2.checkpoint import CheckpointMismatchError, StrictCheckpointer, TrainingCheckpointer
from maskclip_d2.config import get_maskclip_cfg
from maskclip_d2.modeling import build_clip_model


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


# ---- files that are not checkpoints ----------------------------------------------------------
class NotATensor:
    pass


def _pickled_object(path):
    torch.save({"model": two_layers().state_dict(), "extra": NotATensor()}, path)


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    (lambda p: p.write_text("<html>404 Not Found</html>\n"), "is not a PyTorch checkpoint"),
    (lambda p: p.write_text("hello\n"), "is not a PyTorch checkpoint"),
    (lambda p: torch.save([1, 2], p), "is not a PyTorch checkpoint"),
    (_pickled_object, "holds pickled Python objects besides tensors"),
    (lambda p: (torch.save({"model": two_layers().state_dict()}, p),
                p.write_bytes(p.read_bytes()[:300])), "is damaged or truncated"),
], ids=["empty", "html", "hello", "saved-list", "pickled-object", "truncated"])
def test_a_file_that_is_not_a_checkpoint_is_refused_naming_it(tmp_path, write, message):
    path = tmp_path / "model_final.pth"
    write(path)
    with pytest.raises(ValueError) as err:
        StrictCheckpointer(two_layers()).load(str(path))
    text = str(err.value)
    assert str(path) in text and message in text
    assert "weights_only=False" not in text  # never the advice for an untrusted file


# ---- training: strict except the documented partial loads -------------------------------------
class WithHead(nn.Module):
    """A backbone and a Mask2Former-named class head (``sem_seg_head.predictor.class_embed``)."""

    def __init__(self, num_classes):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.predictor = nn.Module()
        self.sem_seg_head.predictor.class_embed = nn.Linear(4, num_classes + 1)


def test_training_replaces_a_class_head_of_another_size_and_refuses_the_rest(tmp_path):
    source = WithHead(num_classes=80)
    torch.save({"model": source.state_dict()}, tmp_path / "coco.pth")
    target = WithHead(num_classes=1)
    head = target.sem_seg_head.predictor.class_embed.weight.clone()
    TrainingCheckpointer(target).load(str(tmp_path / "coco.pth"))
    assert torch.equal(target.backbone.weight, source.backbone.weight)
    assert torch.equal(target.sem_seg_head.predictor.class_embed.weight, head)  # re-initialised
    with pytest.raises(CheckpointMismatchError, match="class head"):  # evaluation stays strict
        StrictCheckpointer(WithHead(1)).load(str(tmp_path / "coco.pth"))

    torch.save({"model": {"backbone.weight": torch.zeros(4, 3)}}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match="3 keys missing from the checkpoint: backbone.bias"):
        TrainingCheckpointer(WithHead(1)).load(str(tmp_path / "partial.pth"))


def test_training_accepts_an_imagenet_backbone_file(tmp_path):
    import pickle

    import numpy as np

    # Detectron2's model-zoo format for weights converted from another framework.
    backbone = {"backbone.weight": np.ones((4, 3), dtype=np.float32), "fc1000.weight": np.zeros(2)}
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump({"model": backbone, "__author__": "torchvision", "matching_heuristics": True}, f)
    model = WithHead(1)
    TrainingCheckpointer(model).load(str(tmp_path / "R-50.pkl"))
    assert torch.equal(model.backbone.weight, torch.ones(4, 3))
    with pytest.raises(CheckpointMismatchError):  # evaluation stays strict
        StrictCheckpointer(WithHead(1)).load(str(tmp_path / "R-50.pkl"))


# ---- MaskCLIP: frozen weights the config names stay out of checkpoints -------------------------
TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny" / "maskclip_tiny.yaml")
FROZEN = ("encoder.visual.", "text_encoder.", "proposal_network.")


@pytest.fixture(scope="module")
def frozen_files(tmp_path_factory):
    """A tiny CLIP file and a proposal-network file, as a user's MODEL.CLIP.WEIGHTS and
    MODEL.MASKCLIP.PROPOSAL_WEIGHTS name them."""
    folder = tmp_path_factory.mktemp("frozen")
    torch.manual_seed(1)
    torch.save(build_clip_model("tiny", "random").state_dict(), folder / "clip.pt")
    model = tiny_maskclip(seed=2)
    torch.save({"model": model.proposal_network.network.state_dict()}, folder / "proposals.pth")
    return {"MODEL.CLIP.WEIGHTS": str(folder / "clip.pt"),
            "MODEL.MASKCLIP.PROPOSAL_WEIGHTS": str(folder / "proposals.pth")}


def tiny_maskclip(seed=0, **opts):
    torch.manual_seed(seed)
    cfg = get_maskclip_cfg(TINY, [str(x) for kv in opts.items() for x in kv])
    return build_model(cfg)


def saved_keys(path):
    return set(torch.load(path, map_location="cpu", weights_only=True)["model"])


def test_checkpoints_hold_what_trains_and_take_named_frozen_weights_from_the_config(tmp_path, frozen_files):
    trained = tiny_maskclip(seed=3, **frozen_files)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(1.0)  # "trained" RMA weights, unlike any fresh model's
    StrictCheckpointer(trained, str(tmp_path)).save("model")
    keys = saved_keys(tmp_path / "model.pth")
    assert keys and not any(k.startswith(FROZEN) for k in keys)
    assert {n for n, p in trained.named_parameters() if p.requires_grad} <= keys
    recorded = torch.load(tmp_path / "model.pth", weights_only=True)["weights_from_config"]
    assert frozen_files["MODEL.CLIP.WEIGHTS"] in recorded["encoder.visual."]

    # Loading into a model built from the same config restores everything, CLIP and the
    # proposal network from the files the config names.
    fresh = tiny_maskclip(seed=4, **frozen_files)
    StrictCheckpointer(fresh).load(str(tmp_path / "model.pth"))
    expected, actual = trained.state_dict(), fresh.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)

    # Detectron2's full state dict, on request.
    full = tiny_maskclip(seed=3, **frozen_files, **{"MODEL.MASKCLIP.FROZEN_WEIGHTS_IN_CHECKPOINTS": True})
    StrictCheckpointer(full, str(tmp_path)).save("full")
    assert saved_keys(tmp_path / "full.pth") == set(full.state_dict())


def test_a_checkpoint_without_clip_needs_a_config_that_names_clip(tmp_path, frozen_files):
    StrictCheckpointer(tiny_maskclip(**frozen_files), str(tmp_path)).save("model")
    random_clip = tiny_maskclip(**{"MODEL.MASKCLIP.PROPOSAL_WEIGHTS": frozen_files["MODEL.MASKCLIP.PROPOSAL_WEIGHTS"]})
    with pytest.raises(CheckpointMismatchError, match="MODEL.CLIP.WEIGHTS") as err:
        StrictCheckpointer(random_clip).load(str(tmp_path / "model.pth"))
    message = str(err.value)
    assert "'encoder.visual.'" in message and "'text_encoder.'" in message
    assert frozen_files["MODEL.CLIP.WEIGHTS"] in message  # what it was saved with


def test_random_clip_is_saved_since_nothing_else_holds_it(tmp_path):
    model = tiny_maskclip()
    StrictCheckpointer(model, str(tmp_path)).save("model")
    assert saved_keys(tmp_path / "model.pth") == set(model.state_dict())
