"""Mask2Former's set criterion: Hungarian matching, then cross-entropy on the classes and
BCE + dice on point-sampled masks, for the final prediction and every auxiliary one.

The number of classes is a constructor argument: 1 for the class-agnostic proposal network,
the training vocabulary's size for the MaskCLIP classifier.
"""
from typing import Dict, List

import torch
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.structures import BitMasks, PolygonMasks
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

from .matcher import HungarianMatcher

# target class of a query that gets no classification loss (F.cross_entropy's ignore_index)
IGNORED = -100

__all__ = [
    "build_set_criterion",
    "gt_masks_of","dice_loss", "sigmoid_ce_loss", "calculate_uncertainty", "SetCriterion"]


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of 1 - (2 |p t| + 1) / (|p| + |t| + 1), divided by ``num_masks``.

    Args:
        inputs: (N, P) logits (p = sigmoid); targets: (N, P) in [0, 1].
    """
    probs = inputs.sigmoid().flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of the mean (over points) binary cross-entropy, divided by ``num_masks``.

    Args:
        inputs: (N, P) logits; targets: (N, P) in [0, 1].
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """PointRend's uncertainty of a binary mask: -|logit|, highest at the decision boundary.

    Args:
        logits: (R, 1, ...). Returns the same shape.
    """
    return -logits.abs()


class SetCriterion(nn.Module):
    """Losses of a mask-classification model against a set of ground-truth masks.

    ``forward(outputs, targets)`` returns the weighted losses: ``loss_ce``, ``loss_mask`` (BCE),
    ``loss_dice`` for the final prediction and ``loss_ce_i``, ``loss_mask_i``, ``loss_dice_i``
    for ``outputs["aux_outputs"][i]`` (when ``deep_supervision``); the total loss is their sum.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        *,
        class_weight: float,
        mask_weight: float,
        dice_weight: float,
        no_object_weight: float,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        deep_supervision: bool = True,
        save_empty_weight: bool = False,
        void_unpenalised_fraction: float = 0.0,
    ):
        """
        Args:
            num_classes: number of classes, no-object excluded (logits have num_classes + 1).
            matcher: pairs queries with targets.
            class_weight, mask_weight, dice_weight: weights of the CE, BCE and dice losses.
            no_object_weight: CE weight of the no-object class (Mask2Former: 0.1).
            num_points: points per matched mask at which BCE and dice are measured.
            oversample_ratio, importance_sample_ratio: PointRend's k and beta for choosing the
                points (uncertain points from k * num_points candidates, beta of them).
            deep_supervision: also supervise ``outputs["aux_outputs"]``.
            save_empty_weight: keep the class weights (``empty_weight``) in state dicts, as
                Mask2Former does (stage 1; stage 2's depend on the vocabulary size).
            void_unpenalised_fraction: > 0: an unmatched query whose predicted mask
                (sigmoid > 0.5) has at least this fraction of its area in the target's
                ``"void"`` pixels (unannotated, not padding) gets no classification loss
                (instead of no-object); 0 = Mask2Former's loss.
        """
        if not 0.0 <= void_unpenalised_fraction <= 1.0:
            raise ValueError(f"void_unpenalised_fraction must be in [0, 1], got {void_unpenalised_fraction}")
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.void_unpenalised_fraction = void_unpenalised_fraction
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        # Mask2Former's name for it. Saved in checkpoints only when ``save_empty_weight`` (stage
        # 1, like Mask2Former's, so checkpoints load both ways); a checkpoint that lacks it, or
        # has it when it is not saved (the references' stage 2), loads: it is derived from the
        # config, never learnt.
        self.register_buffer("empty_weight", class_weights, persistent=save_empty_weight)
        self.register_load_state_dict_pre_hook(_accept_any_empty_weight)

    def loss_labels(self, outputs, targets, indices) -> Dict[str, torch.Tensor]:
        """Weighted cross-entropy over all queries; unmatched queries' target is no-object."""
        logits = outputs["pred_logits"].float()  # (B, Q, K + 1)
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {logits.shape[-1]} classes, the criterion expects "
                f"num_classes + 1 = {self.num_classes + 1}"
            )
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        if self.void_unpenalised_fraction > 0:
            target_classes[self._queries_in_void(outputs["pred_masks"], targets)] = IGNORED
        for b, (query_idx, target_idx) in enumerate(indices):
            target_classes[b, query_idx.to(logits.device)] = targets[b]["labels"][target_idx.to(logits.device)]
        if (target_classes == IGNORED).all():  # nothing to classify: no loss (not 0 / 0)
            return {"loss_ce": logits.sum() * 0.0}
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits),
                               ignore_index=IGNORED)
        return {"loss_ce": loss}

    @torch.no_grad()
    def _queries_in_void(self, pred_masks: torch.Tensor, targets) -> torch.Tensor:
        """(B, Q) bool: the predicted mask (B, Q, h, w) lies in the target's void pixels for
        at least ``void_unpenalised_fraction`` of its area (targets without "void": none)."""
        in_void = torch.zeros(pred_masks.shape[:2], dtype=torch.bool, device=pred_masks.device)
        for b, target in enumerate(targets):
            if target.get("void") is None:
                continue
            # share of void pixels under each low-resolution mask pixel
            void = F.interpolate(target["void"][None, None].to(pred_masks.dtype), size=pred_masks.shape[-2:],
                                 mode="area")[0, 0]
            masks = (pred_masks[b] > 0).to(pred_masks.dtype)  # sigmoid > 0.5
            area = masks.flatten(1).sum(1)
            void_area = (masks * void).flatten(1).sum(1)
            in_void[b] = (area > 0) & (void_area >= self.void_unpenalised_fraction * area)
        return in_void

    def loss_masks(self, outputs, targets, indices, num_masks: float) -> Dict[str, torch.Tensor]:
        """BCE and dice between matched masks, at points chosen by PointRend's rule."""
        pred_masks = outputs["pred_masks"]
        matched_pred = torch.cat([pred_masks[b, q.to(pred_masks.device)] for b, (q, _) in enumerate(indices)])
        if matched_pred.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        matched_target = torch.cat(
            [targets[b]["masks"][t.to(pred_masks.device)] for b, (_, t) in enumerate(indices)]
        ).to(matched_pred)
        # (N, 1, h, w) and (N, 1, H, W): point coordinates are normalised, sizes may differ
        matched_pred = matched_pred[:, None]
        matched_target = matched_target[:, None]
        with torch.no_grad():
            points = get_uncertain_point_coords_with_randomness(
                matched_pred,
                calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = point_sample(matched_target, points, align_corners=False).squeeze(1)
        point_logits = point_sample(matched_pred, points, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def _losses(self, outputs, targets, num_masks: float, suffix: str = "") -> Dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses = self.loss_labels(outputs, targets, indices)
        losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        return {name + suffix: value * self.weight_dict[name] for name, value in losses.items()}

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``"pred_logits"`` (B, Q, num_classes + 1), ``"pred_masks"`` (B, Q, h, w),
                optionally ``"aux_outputs"``: a list of dicts with the same two keys.
            targets: B dicts, ``"labels"`` (M_b,) int64 in [0, num_classes) and ``"masks"``
                (M_b, H, W) in {0, 1} (any dtype), aligned with the padded input image.

        Returns:
            the weighted losses (see the class docstring).
        """
        # masks in the batch, averaged over workers: every worker divides by the same number
        num_masks = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], device=outputs["pred_masks"].device
        )
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num_masks)
        num_masks = max(num_masks.item() / comm.get_world_size(), 1.0)

        losses = self._losses(outputs, targets, num_masks)
        if self.deep_supervision:
            for index, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update(self._losses(aux, targets, num_masks, suffix=f"_{index}"))
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, weights={self.weight_dict}, "
            f"no_object_weight={self.no_object_weight}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, importance_sample_ratio={self.importance_sample_ratio}"
            + (f", void_unpenalised_fraction={self.void_unpenalised_fraction}"
               if self.void_unpenalised_fraction else "")
        )


def _accept_any_empty_weight(module, state_dict, prefix, *args):
    """Load-time hook of ``SetCriterion``: the config's no-object weights win over a
    checkpoint's ``empty_weight`` (present or not, of any vocabulary size)."""
    key = prefix + "empty_weight"
    state_dict.pop(key, None)
    if key in module.state_dict(prefix=prefix):
        state_dict[key] = module.empty_weight.detach().clone()


def build_set_criterion(num_classes: int, node, save_empty_weight: bool = False,
                        void_unpenalised_fraction: float = 0.0) -> SetCriterion:
    """The matcher and criterion from a config node with Mask2Former's loss keys
    (CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT, NO_OBJECT_WEIGHT, TRAIN_NUM_POINTS,
    OVERSAMPLE_RATIO, IMPORTANCE_SAMPLE_RATIO, DEEP_SUPERVISION): ``cfg.MODEL.MASK_FORMER``
    for stage 1, ``cfg.MODEL.MASKCLIP`` for stage 2. The loss weights are also the costs."""
    matcher = HungarianMatcher(
        cost_class=node.CLASS_WEIGHT, cost_mask=node.MASK_WEIGHT, cost_dice=node.DICE_WEIGHT,
        num_points=node.TRAIN_NUM_POINTS,
    )
    return SetCriterion(
        num_classes, matcher,
        class_weight=node.CLASS_WEIGHT, mask_weight=node.MASK_WEIGHT,
        dice_weight=node.DICE_WEIGHT, no_object_weight=node.NO_OBJECT_WEIGHT,
        num_points=node.TRAIN_NUM_POINTS, oversample_ratio=node.OVERSAMPLE_RATIO,
        importance_sample_ratio=node.IMPORTANCE_SAMPLE_RATIO,
        deep_supervision=node.DEEP_SUPERVISION, save_empty_weight=save_empty_weight,
        void_unpenalised_fraction=void_unpenalised_fraction,
    )


def gt_masks_of(dataset_dict: Dict) -> torch.Tensor:
    """(N, H, W) bool ground-truth masks of a mapped input (its ``instances.gt_masks``: a
    tensor, ``BitMasks`` or ``PolygonMasks``); (0, H, W) when it has none."""
    if "instances" not in dataset_dict:
        raise ValueError(
            "this input needs ground truth ('instances' with 'gt_masks'), for training or for "
            "MODEL.MASKCLIP.PROPOSAL_NETWORK 'gt': use a dataset with annotations and a "
            "mapper that keeps them"
        )
    instances = dataset_dict["instances"]
    height, width = instances.image_size
    if not instances.has("gt_masks"):
        return torch.zeros((0, height, width), dtype=torch.bool)
    gt_masks = instances.gt_masks
    if isinstance(gt_masks, PolygonMasks):
        gt_masks = BitMasks.from_polygon_masks(gt_masks, height, width)
    if isinstance(gt_masks, BitMasks):
        gt_masks = gt_masks.tensor
    return gt_masks.bool()
