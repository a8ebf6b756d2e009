"""MODEL.MASK_FORMER.VOID_UNPENALISED_FRACTION: the stage-1 remedy for proposals of
unannotated (void) objects. An unmatched query whose mask lies in void pixels gets no
no-object loss; every other query's loss is Mask2Former's, as F.cross_entropy computes it."""
import pytest
import torch
from detectron2.structures import BitMasks, Instances
from torch.nn import functional as F

from maskclip_d2.config import get_maskclip_cfg
from maskclip_d2.modeling.losses.criterion import SetCriterion
from maskclip_d2.modeling.losses.matcher import HungarianMatcher
from maskclip_d2.modeling.proposals.class_agnostic_mask2former import ClassAgnosticMask2Former

SIZE = 32


def _rect(y0, x0, y1, x1):
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _criterion(fraction):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=256)
    return SetCriterion(1, matcher, class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
                        num_points=256, oversample_ratio=3.0, importance_sample_ratio=0.75,
                        void_unpenalised_fraction=fraction)


def _outputs():
    """4 queries at 1/2 resolution: 0 on the annotated object, 1 inside the void region,
    2 with half of its area in void, 3 empty."""
    annotated, void = _rect(0, 0, 16, 32), _rect(16, 0, 32, 16)
    masks = torch.full((1, 4, SIZE // 2, SIZE // 2), -20.0)
    masks[0, 0, :8, :] = 20.0  # the annotated top half
    masks[0, 1, 10:14, 2:6] = 20.0  # inside the void bottom-left quarter
    masks[0, 2, 8:16, 4:12] = 20.0  # bottom middle: 4 of its 8 columns in void
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 2)
    return {"pred_logits": logits, "pred_masks": masks}, annotated, void


def _ce(logits, target_classes):
    return 2.0 * F.cross_entropy(logits.transpose(1, 2), target_classes, torch.tensor([1.0, 0.1]),
                                 ignore_index=-100)


def test_unmatched_queries_in_void_get_no_classification_loss():
    outputs, annotated, void = _outputs()
    targets = [{"labels": torch.tensor([0]), "masks": annotated[None].float(), "void": void}]
    logits = outputs["pred_logits"]
    # query 2 covers rows 16-31, columns 8-23 at full resolution: columns 8-15 (half) are void
    paper = _criterion(0.0)(outputs, targets)["loss_ce"]
    assert torch.allclose(paper, _ce(logits, torch.tensor([[0, 1, 1, 1]])))
    half = _criterion(0.5)(outputs, targets)["loss_ce"]
    assert torch.allclose(half, _ce(logits, torch.tensor([[0, -100, -100, 1]])))
    strict = _criterion(0.9)(outputs, targets)["loss_ce"]
    assert torch.allclose(strict, _ce(logits, torch.tensor([[0, -100, 1, 1]])))
    # without "void" in the targets the remedy changes nothing
    targets[0].pop("void")
    assert torch.allclose(_criterion(0.5)(outputs, targets)["loss_ce"], paper)


def test_only_void_queries_and_no_targets_give_zero_loss_not_nan():
    outputs, _, void = _outputs()
    outputs["pred_masks"][0, 0] = -20.0
    outputs["pred_masks"][0, :, 8:, :8] = 20.0  # every query in the void quarter
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, SIZE, SIZE),
                "void": void}]
    loss = _criterion(0.5)(outputs, targets)["loss_ce"]
    assert loss.item() == 0.0


def test_fraction_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="void_unpenalised_fraction must be in"):
        _criterion(1.5)


def _stage1(fraction):
    cfg = get_maskclip_cfg("configs/synthetic/class_agnostic_mask2former.yaml",
                           ["MODEL.MASK_FORMER.VOID_UNPENALISED_FRACTION", fraction])
    return ClassAgnosticMask2Former(cfg)


def test_stage1_targets_mark_unannotated_pixels_void_not_padding():
    assert get_maskclip_cfg().MODEL.MASK_FORMER.VOID_UNPENALISED_FRACTION == 0.0  # off by default
    instances = Instances((SIZE, SIZE))
    instances.gt_masks = BitMasks(torch.stack([_rect(0, 0, 16, 32)]))
    padding = _rect(0, 24, 32, 32)  # the mapper padded the right quarter
    x = {"image": torch.zeros(3, SIZE, SIZE, dtype=torch.uint8), "instances": instances, "padding_mask": padding}
    target = _stage1(0.5).prepare_targets([x], (SIZE + 8, SIZE + 8))[0]  # batch padding too
    expected = torch.zeros(SIZE + 8, SIZE + 8, dtype=torch.bool)
    expected[16:32, :24] = True
    assert torch.equal(target["void"], expected)
    assert "void" not in _stage1(0.0).prepare_targets([x], (SIZE, SIZE))[0]
