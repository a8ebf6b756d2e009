"""The set-prediction loss both stages train with (Mask2Former's): Hungarian matching of the
predicted masks to the ground-truth segments (``matcher``), then the classification, dice and
binary mask losses of the matched pairs (``criterion``; the paper's weights 2 / 5 / 5)."""
from .criterion import SetCriterion, build_set_criterion, gt_masks_of
from .matcher import HungarianMatcher
