"""Set criterion: dice and BCE by hand, ~0 mask loss for perfect masks, CE with no-object weight."""
import math

import torch
from torch.nn import functional as F

from maskclip_d2.modeling.losses.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from maskclip_d2.modeling.losses.matcher import HungarianMatcher


def test_dice_and_bce_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), -math.log(3.0)]])  # p = [.5, .5], [.75, .25]
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # dice: 1 - (2 * .5 + 1) / (1 + 1 + 1) = 1/3; 1 - (2 * .75 + 1) / (1 + 1 + 1) = 1/6; / 2 masks
    assert math.isclose(dice_loss(logits, targets, 2.0).item(), (1 / 3 + 1 / 6) / 2, rel_tol=1e-6)
    # bce: log 2 for both points of mask 0; -log .75 for both points of mask 1
    assert math.isclose(sigmoid_ce_loss(logits, targets, 2.0).item(), (math.log(2) - math.log(0.75)) / 2, rel_tol=1e-6)


def _criterion(num_classes=1, **kwargs):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=256)
    options = dict(
        class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
        num_points=256, oversample_ratio=3.0, importance_sample_ratio=0.75,
    )
    options.update(kwargs)
    return SetCriterion(num_classes, matcher, **options)


def _rect(y0, x0, y1, x1, size=32):
    mask = torch.zeros(size, size)
    mask[y0:y1, x0:x1] = 1
    return mask


def _targets():
    masks = torch.stack([_rect(2, 2, 14, 18), _rect(18, 10, 30, 30)])
    return [{"labels": torch.tensor([0, 0]), "masks": masks}], masks


def test_mask_losses_vanish_for_perfect_masks_and_grow_otherwise():
    """Point losses interpolate bilinearly, so a perfect binary mask still pays on the half-pixel
    band along its edge; with uniform points on 128 x 128 masks that band is ~1% of the points."""
    torch.manual_seed(0)
    size = 128
    masks = torch.stack([_rect(8, 8, 56, 72, size), _rect(72, 40, 120, 120, size)])
    targets = [{"labels": torch.tensor([0, 0]), "masks": masks}]
    logits = torch.zeros(1, 4, 2)
    perfect = torch.full((1, 4, size, size), -30.0)
    perfect[0, 1], perfect[0, 3] = masks[1] * 60 - 30, masks[0] * 60 - 30
    shifted = torch.roll(perfect, shifts=16, dims=-1)
    unweighted = dict(class_weight=1.0, mask_weight=1.0, dice_weight=1.0, num_points=4096)

    uniform = _criterion(oversample_ratio=1.0, importance_sample_ratio=0.0, **unweighted)
    good = uniform({"pred_logits": logits, "pred_masks": perfect}, targets)
    bad = uniform({"pred_logits": logits, "pred_masks": shifted}, targets)
    print(f"uniform points: perfect BCE {good['loss_mask'].item():.4f} dice {good['loss_dice'].item():.4f}; "
          f"shifted BCE {bad['loss_mask'].item():.4f} dice {bad['loss_dice'].item():.4f}")
    assert good["loss_mask"].item() < 0.06 and good["loss_dice"].item() < 0.02
    assert bad["loss_mask"].item() > 20 * good["loss_mask"].item()
    assert bad["loss_dice"].item() > 10 * good["loss_dice"].item()

    # Mask2Former's sampling (75% of points at the most uncertain places: the edges)
    importance = _criterion(**unweighted)
    good = importance({"pred_logits": logits, "pred_masks": perfect}, targets)
    bad = importance({"pred_logits": logits, "pred_masks": shifted}, targets)
    assert bad["loss_mask"].item() > 2 * good["loss_mask"].item()
    assert bad["loss_dice"].item() > 2 * good["loss_dice"].item()


def test_classification_loss_weights_no_object():
    targets, masks = _targets()
    criterion = _criterion(num_classes=3)
    pred_masks = torch.full((1, 3, 32, 32), -30.0)
    pred_masks[0, 0], pred_masks[0, 2] = masks[0] * 60 - 30, masks[1] * 60 - 30
    logits = torch.randn(1, 3, 4)
    targets[0]["labels"] = torch.tensor([2, 1])
    losses = criterion({"pred_logits": logits, "pred_masks": pred_masks}, targets)
    # queries 0, 2 -> classes 2, 1; query 1 -> no-object (3), weight 0.1; weighted mean
    lp = logits[0].log_softmax(-1)
    expected = -(lp[0, 2] + lp[2, 1] + 0.1 * lp[1, 3]) / (1 + 1 + 0.1)
    assert math.isclose(losses["loss_ce"].item(), 2.0 * expected.item(), rel_tol=1e-5)
    assert math.isclose(
        losses["loss_ce"].item(),
        2.0 * F.cross_entropy(logits[0], torch.tensor([2, 3, 1]), torch.tensor([1, 1, 1, 0.1])).item(),
        rel_tol=1e-5,
    )


def test_deep_supervision_and_empty_targets():
    criterion = _criterion()
    outputs = {
        "pred_logits": torch.zeros(2, 3, 2, requires_grad=True),
        "pred_masks": torch.zeros(2, 3, 8, 8, requires_grad=True),
    }
    outputs["aux_outputs"] = [{"pred_logits": outputs["pred_logits"] * 1, "pred_masks": outputs["pred_masks"] * 1}] * 2
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)},
        {"labels": torch.zeros(1, dtype=torch.int64), "masks": _rect(0, 0, 16, 16)[None]},
    ]
    losses = criterion(outputs, targets)
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # each auxiliary prediction is scored on its own: CE of a layer equals the CE of that layer alone
    aux = [{"pred_logits": torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(i)),
            "pred_masks": outputs["pred_masks"].detach()} for i in range(2)]
    deep = criterion({**{k: v.detach() for k, v in outputs.items() if k != "aux_outputs"}, "aux_outputs": aux}, targets)
    for i in range(2):
        alone = criterion(aux[i], targets)
        assert math.isclose(deep[f"loss_ce_{i}"].item(), alone["loss_ce"].item(), rel_tol=1e-6)
    assert not math.isclose(deep["loss_ce_0"].item(), deep["loss_ce_1"].item(), rel_tol=1e-6)
    # only no-object for every query of both images -> zero mask loss
    none = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)}] * 2
    empty = criterion({k: v for k, v in outputs.items() if k != "aux_outputs"}, none)
    assert empty["loss_mask"].item() == 0 and empty["loss_dice"].item() == 0
    assert math.isclose(empty["loss_ce"].item(), 2.0 * math.log(2), rel_tol=1e-6)
