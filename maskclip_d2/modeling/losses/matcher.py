"""Hungarian matching of predicted masks to ground-truth masks (Mask2Former's matcher).

The cost of pairing query i with target j is::

    cost_class * (-p_i(class_j)) + cost_mask * BCE(mask_i, target_j) + cost_dice * dice(mask_i, target_j)

with both mask costs measured on ``num_points`` random points shared by all masks of an image.
The number of classes is whatever the logits have (the last one is no-object), so the same
matcher serves the class-agnostic proposals and the open-vocabulary classifier.
"""
from typing import Dict, List, Tuple

import torch
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

__all__ = ["batch_sigmoid_ce_cost", "batch_dice_cost", "HungarianMatcher"]


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        inputs: (N, P) logits; targets: (M, P) in [0, 1].

    Returns:
        (N, M): entry (n, m) = mean over points of BCE(sigmoid(inputs[n]), targets[m]).
    """
    num_points = inputs.shape[1]
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), linear in t
    pos = F.softplus(-inputs)
    neg = F.softplus(inputs)
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss, 1 - (2 |p t| + 1) / (|p| + |t| + 1), of every prediction against every target.

    Args:
        inputs: (N, P) logits (p = sigmoid); targets: (M, P) in [0, 1].

    Returns:
        (N, M).
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to queries minimising the summed cost per image."""

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0, num_points: int = 0):
        """
        Args:
            cost_class, cost_mask, cost_dice: weights of the three costs (not all zero).
            num_points: random points per image at which the masks are compared (> 0).
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one of cost_class, cost_mask, cost_dice must be non-zero")
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, target_masks: torch.Tensor) -> torch.Tensor:
        """Cost of every (query, target) pair of one image.

        Args:
            logits: (Q, K + 1) class logits; masks: (Q, h, w) mask logits;
            labels: (M,) int64 in [0, K); target_masks: (M, H, W), any resolution.

        Returns:
            (Q, M) float32.
        """
        device_type = masks.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            probs = logits.float().softmax(-1)
            cost_class = -probs[:, labels]

            points = torch.rand(1, self.num_points, 2, device=masks.device)
            pred_points = point_sample(
                masks[:, None].float(), points.expand(masks.shape[0], -1, -1), align_corners=False
            ).squeeze(1)
            target_points = point_sample(
                target_masks[:, None].float(), points.expand(target_masks.shape[0], -1, -1), align_corners=False
            ).squeeze(1)
            cost_mask = batch_sigmoid_ce_cost(pred_points, target_points)
            cost_dice = batch_dice_cost(pred_points, target_points)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: ``"pred_logits"`` (B, Q, K + 1) and ``"pred_masks"`` (B, Q, h, w).
            targets: B dicts, ``"labels"`` (M_b,) int64 and ``"masks"`` (M_b, H, W).

        Returns:
            B pairs (query indices, target indices), int64 tensors of length min(Q, M_b) on the
            CPU; query i is matched to target j.
        """
        indices = []
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(
                outputs["pred_logits"][b], outputs["pred_masks"][b], target["labels"], target["masks"]
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
