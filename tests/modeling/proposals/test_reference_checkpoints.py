"""Checkpoints of the reference codebases load, and ours load there: the stage-1
Mask2Former's state-dict layout (``criterion.empty_weight``, ``MaskFormerHead`` version 2) and
fine-tuning stage 1 from a standard (133-class) Mask2Former checkpoint."""
import logging

import pytest
import torch

from maskclip_d2.checkpoint import CheckpointMismatchError, StrictCheckpointer
from maskclip_d2.modeling.proposals.class_agnostic_mask2former import ClassAgnosticMask2Former
from helpers.tiny_mask2former import tiny_cfg


def stage1(seed=0):
    torch.manual_seed(seed)
    return ClassAgnosticMask2Former(tiny_cfg())


def as_upstream_mask2former(state, num_classes):
    """What upstream Mask2Former's code saves for the same network: its SetCriterion's
    ``empty_weight`` (num_classes + 1) buffer, and a class head of num_classes + 1 outputs."""
    state = dict(state)
    state["criterion.empty_weight"] = torch.cat([torch.ones(num_classes), torch.tensor([0.1])])
    width = state["sem_seg_head.predictor.class_embed.weight"].shape[1]
    state["sem_seg_head.predictor.class_embed.weight"] = torch.randn(num_classes + 1, width)
    state["sem_seg_head.predictor.class_embed.bias"] = torch.randn(num_classes + 1)
    return state


def test_stage1_state_dict_has_upstreams_layout():
    state = stage1().state_dict()
    # SetCriterion's buffer, as upstream (class-agnostic: object, no object)
    assert torch.equal(state["criterion.empty_weight"], torch.tensor([1.0, 0.1]))
    # Upstream's MaskFormerHead renames every key outside `predictor` of a state dict whose
    # version is < 2 (moving it under `pixel_decoder`): ours must say version 2.
    assert state._metadata["sem_seg_head"]["version"] == 2


def test_class_agnostic_checkpoint_of_upstream_code_loads_strictly(tmp_path):
    source = stage1(seed=1)
    state = as_upstream_mask2former(source.state_dict(), num_classes=1)
    state["sem_seg_head.predictor.class_embed.weight"] = source.state_dict()["sem_seg_head.predictor.class_embed.weight"]
    state["sem_seg_head.predictor.class_embed.bias"] = source.state_dict()["sem_seg_head.predictor.class_embed.bias"]
    torch.save({"model": state}, tmp_path / "upstream.pth")
    target = stage1(seed=2)
    StrictCheckpointer(target).load(str(tmp_path / "upstream.pth"))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_checkpoint_without_empty_weight_still_loads(tmp_path):
    state = stage1(seed=1).state_dict()
    del state["criterion.empty_weight"]
    torch.save({"model": state}, tmp_path / "old.pth")
    StrictCheckpointer(stage1()).load(str(tmp_path / "old.pth"))


def test_133_class_mask2former_fine_tunes_stage1_with_its_class_head_replaced(tmp_path, caplog):
    source = stage1(seed=1)
    torch.save({"model": as_upstream_mask2former(source.state_dict(), num_classes=133)},
               tmp_path / "coco_panoptic_mask2former.pth")
    target = stage1(seed=2)
    head_before = target.sem_seg_head.predictor.class_embed.weight.clone()
    with caplog.at_level(logging.INFO, logger="maskclip_d2.checkpoint"):
        StrictCheckpointer(target, replace_class_head=True).load(str(tmp_path / "coco_panoptic_mask2former.pth"))
    assert "Re-initialising the class head sem_seg_head.predictor.class_embed" in caplog.text
    assert "134 outputs (133 classes + no object), the model's 2" in caplog.text
    assert torch.equal(target.sem_seg_head.predictor.class_embed.weight, head_before)
    for key, value in source.state_dict().items():
        if "class_embed" not in key:
            assert torch.equal(target.state_dict()[key], value), key

    # Loaded strictly as it is (e.g. as MaskCLIP's proposal network), the error names the head.
    with pytest.raises(CheckpointMismatchError, match="is a Mask2Former class head with 134 outputs"
                       ".*133-class Mask2Former.*--drop-class-head"):
        StrictCheckpointer(stage1()).load(str(tmp_path / "coco_panoptic_mask2former.pth"))
