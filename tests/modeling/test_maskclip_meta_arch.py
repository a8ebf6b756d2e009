"""The MaskCLIP meta-architecture on the tiny config: output formats, odd inputs, GT proposals,
and what trains."""

import pytest
import torch

from helpers.tiny_maskclip import VOCABULARY, image_input, tiny_model

def two_rectangles(height, width):
    masks = torch.zeros((2, height, width), dtype=torch.bool)
    masks[0, : height // 2, : width // 2] = True
    masks[1, height // 2 :, width // 3 :] = True
    return masks


def check_formats(result, height, width, num_classes, max_instances):
    sem_seg = result["sem_seg"]
    assert sem_seg.shape == (num_classes, height, width)
    assert torch.isfinite(sem_seg).all()
    seg, segments = result["panoptic_seg"]
    assert seg.shape == (height, width) and seg.dtype == torch.int32
    ids = sorted(s["id"] for s in segments)
    assert ids == list(range(1, len(segments) + 1))
    assert set(torch.unique(seg).tolist()) <= {0, *ids}
    for s in segments:
        assert 0 <= s["category_id"] < num_classes and s["area"] == int((seg == s["id"]).sum())
    inst = result["instances"]
    assert inst.image_size == (height, width)
    assert len(inst) <= max_instances
    assert inst.pred_masks.shape == (len(inst), height, width) and inst.pred_masks.dtype == torch.bool
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < num_classes)).all()
    assert torch.isfinite(inst.scores).all() and torch.isfinite(inst.pred_boxes.tensor).all()


@torch.no_grad()
def test_outputs_have_detectron2_formats_at_the_requested_size():
    model = tiny_model()
    results = model([image_input(40, 56, out_size=(80, 112)), image_input(64, 48)])
    check_formats(results[0], 80, 112, len(VOCABULARY), model.detections_per_image)
    check_formats(results[1], 64, 48, len(VOCABULARY), model.detections_per_image)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["rma", "mask_tokens", "baseline"])
def test_odd_image_sizes_and_one_class(mode):
    model = tiny_model("MODEL.MASKCLIP.MODE", mode)
    model.set_vocabulary(["cat"])
    results = model([image_input(1, 1), image_input(17, 4000)])
    check_formats(results[0], 1, 1, 1, model.detections_per_image)
    check_formats(results[1], 17, 4000, 1, model.detections_per_image)


@torch.no_grad()
def test_gt_proposals_give_the_ground_truth_masks():
    model = tiny_model("MODEL.MASKCLIP.PROPOSAL_NETWORK", "gt", "MODEL.MASKCLIP.MODE", "mask_tokens")
    masks = two_rectangles(48, 64)
    (result,) = model([image_input(48, 64, masks, [0, 2])])
    inst = result["instances"]
    # every (mask, class) pair: each ground-truth mask appears, exactly, among the instances
    for m in masks:
        assert any(torch.equal(p, m) for p in inst.pred_masks)
    seg, segments = result["panoptic_seg"]
    assert len(segments) == len(masks)
    for s in segments:
        region = seg == s["id"]
        assert any(torch.equal(region, m) for m in masks)


@torch.no_grad()
def test_zero_proposals():
    model = tiny_model("MODEL.MASKCLIP.PROPOSAL_NETWORK", "gt", "MODEL.MASKCLIP.MODE", "mask_tokens")
    (result,) = model([image_input(30, 20, torch.zeros((0, 30, 20), dtype=torch.bool), [])])
    check_formats(result, 30, 20, len(VOCABULARY), model.detections_per_image)
    assert result["sem_seg"].abs().sum() == 0
    assert result["panoptic_seg"][1] == [] and len(result["instances"]) == 0


def test_gt_proposals_need_annotations():
    model = tiny_model("MODEL.MASKCLIP.PROPOSAL_NETWORK", "gt")
    with pytest.raises(ValueError, match="needs ground truth"):
        model([image_input(30, 20)])


def test_vocabulary_is_checked():
    model = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        model.set_vocabulary([])
    with pytest.raises(ValueError, match="more than once"):
        model.set_vocabulary(["cat", "dog", "cat"])


def test_training_reaches_only_the_rma_weights():
    model = tiny_model()
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".rma_layers." in n for n in trainable)
    assert not model.proposal_network.training  # frozen parts stay in eval mode
    masks = two_rectangles(64, 64)
    losses = model([image_input(64, 64, masks, [0, 3]), image_input(64, 64, masks[:1], [1])])
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_training_free_modes_refuse_to_train():
    model = tiny_model("MODEL.MASKCLIP.MODE", "mask_tokens")
    model.train()
    masks = two_rectangles(64, 64)
    with pytest.raises(RuntimeError, match="nothing to train"):
        model([image_input(64, 64, masks, [0, 3])])


@torch.no_grad()
def test_fixed_vocabularies_free_the_text_tower_and_outputs_do_not_change():
    resident = tiny_model("MODEL.CLIP.TEXT_TOWER_DEVICE", "", "MODEL.CLIP.RELEASE_TEXT_TOWER", False)
    model = tiny_model()
    assert model.text_encoder.tower_device == torch.device("cpu")
    inputs = [image_input(48, 64)]
    expected = resident(inputs)[0]
    model.fix_vocabularies([VOCABULARY, ["cat", "dog"]])
    assert model.text_encoder.tower_released
    assert all(p.is_meta for p in model.text_encoder.parameters())
    for vocabulary in (VOCABULARY, ["cat", "dog"]):
        model.set_vocabulary(vocabulary)
        resident.set_vocabulary(vocabulary)
        expected, actual = resident(inputs)[0], model(inputs)[0]
        assert torch.equal(actual["sem_seg"], expected["sem_seg"])
        assert torch.equal(actual["panoptic_seg"][0], expected["panoptic_seg"][0])
        assert actual["panoptic_seg"][1] == expected["panoptic_seg"][1]
        assert torch.equal(actual["instances"].scores, expected["instances"].scores)
    # Random CLIP weights cannot be rebuilt for a vocabulary not embedded before.
    model.set_vocabulary(["rocket"])
    with pytest.raises(RuntimeError, match="MODEL.CLIP.WEIGHTS 'random'"):
        model(inputs)
