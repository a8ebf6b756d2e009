"""From per-mask class probabilities and mask probabilities to Detectron2's three outputs.

Inputs, for one image (M masks, K vocabulary classes, H x W the output resolution):
    class_probs: (M, K + 1) probabilities over the vocabulary and a last "no object" column.
    mask_probs: (M, H, W) in [0, 1].
Outputs follow Detectron2's format: ``sem_seg`` (K, H, W) scores; ``panoptic_seg`` a tuple
(segment ids (H, W) int32, list of segment dicts); ``instances`` an ``Instances``.

Work shared by the tasks is done once per image (``ImageMasks``: the binarised masks, their
areas, Mask2Former's mask quality, their boxes), and nothing loops over masks or segments
in Python except the assignment of segment ids; tests/modeling/test_postprocessing.py checks
that the outputs equal those of the straightforward version (postprocessing_reference.py).
"""
from functools import cached_property
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.structures import Boxes, Instances

__all__ = [
    "semantic_inference", "panoptic_inference", "instance_inference", "ImageMasks",
    "mask_boxes", "OVERLAP_RULES", "INSTANCE_THING_FILTERS",
]

# Panoptic overlap test: a kept mask's segment survives when area / original_area >= the
# overlap threshold, original_area = |mask >= 0.5|, and area =
#   "mask2former": |pixels where the mask wins the argmax| (Mask2Former's and the authors' test);
#   "visible":     |pixels where it wins AND mask >= 0.5| (the pixels the segment really gets).
OVERLAP_RULES = ("mask2former", "visible")
# Per-mask reductions over (M, H, W) run on chunks of about this many elements, so that their
# temporaries (an int64 or float32 copy) stay near 32 MB instead of M x H x W (0.4 GB for 100
# masks of 640 x 853 pixels): memory only; the areas are the same, the mask qualities the same
# up to float rounding (a sum's order may depend on the chunk's size).
CHUNK_ELEMENTS = 2**22
# Instance inference on a vocabulary with things and stuff:
#   "after_topk":  top-k (mask, class) pairs over all classes, then keep the things
#                  (Mask2Former's and the authors'; fewer than k detections may remain);
#   "before_topk": top-k over the thing classes only (always k detections when there are enough).
INSTANCE_THING_FILTERS = ("after_topk", "before_topk")


class ImageMasks:
    """One image's mask probabilities (M, H, W) and what several tasks read from them, each
    computed on first use and kept: ``on`` (M, H, W) bool, mask >= 0.5; ``areas`` (M,) pixels
    on; ``quality`` (M,) Mask2Former's mask score, the mean probability inside the mask;
    ``boxes`` (M, 4) XYXY boxes of ``on`` (``mask_boxes``)."""

    def __init__(self, probs: torch.Tensor):
        self.probs = probs

    @cached_property
    def on(self) -> torch.Tensor:
        return self.probs >= 0.5

    @cached_property
    def areas(self) -> torch.Tensor:
        # a count over all masks at once makes an int64 copy of ``on`` (8 bytes a pixel)
        return torch.cat([torch.count_nonzero(on.flatten(1), dim=1) for on in self._chunks(self.on)])

    @cached_property
    def quality(self) -> torch.Tensor:
        # where(on, p, 0) holds the same values as p * on, without a float copy of ``on``;
        # a few masks at a time: each row's sum is the same, the temporary is a chunk's
        inside = [torch.where(on, probs, 0.0).flatten(1).sum(1)
                  for on, probs in zip(self._chunks(self.on), self._chunks(self.probs))]
        return torch.cat(inside) / self.areas.clamp(min=1)

    def _chunks(self, tensor: torch.Tensor):
        """``tensor`` (M, H, W) split along the masks into chunks of about
        ``CHUNK_ELEMENTS`` elements (at least one mask each, at least one chunk)."""
        per_chunk = max(1, CHUNK_ELEMENTS // max(1, tensor[0].numel())) if len(tensor) else 1
        return tensor.split(per_chunk) if len(tensor) else [tensor]

    @cached_property
    def boxes(self) -> torch.Tensor:
        return mask_boxes(self.on)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(M, 4) float32 tight XYXY boxes of (M, H, W) bool masks, all zero for an empty mask:
    Detectron2's ``BitMasks.get_bounding_boxes``, without its loop over masks (and on the
    masks' device)."""
    def extent(any_on: torch.Tensor):  # (M, n) -> first index on, last index on + 1
        n = any_on.shape[1]
        index = torch.arange(n, device=any_on.device)
        first = torch.where(any_on, index, n).min(1).values
        last = torch.where(any_on, index, -1).max(1).values + 1
        return first, last

    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    x_on, y_on = masks.any(dim=1), masks.any(dim=2)
    (x0, x1), (y0, y1) = extent(x_on), extent(y_on)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return torch.where(x_on.any(1)[:, None], boxes, torch.zeros_like(boxes))


def semantic_inference(class_probs: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
    """Per-pixel class scores (K, H, W): each mask votes for its classes where it is on."""
    return torch.einsum("mk,mhw->khw", class_probs[:, :-1], mask_probs)


def panoptic_inference(
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    is_thing: torch.Tensor,
    object_mask_threshold: float,
    overlap_threshold: float,
    overlap_rule: str = "mask2former",
    masks: Optional[ImageMasks] = None,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Non-overlapping segments: each pixel goes to the kept mask with the highest
    score x mask probability; stuff segments of one class are merged.

    Args:
        is_thing: (K,) bool, whether each vocabulary class is a thing (else stuff).
        object_mask_threshold: masks whose best class score is below this are dropped.
        overlap_threshold: a segment is dropped when less than this fraction of its mask
            (mask_prob >= 0.5) survives the per-pixel assignment.
        overlap_rule: how the surviving fraction is counted, one of ``OVERLAP_RULES``.
        masks: ``ImageMasks(mask_probs)``, shared with the other tasks (default: a new one).
    Returns:
        (segment ids (H, W) int32 with 0 = void, segments_info) as Detectron2's
        ``panoptic_seg``; segment dicts have ``id``, ``category_id`` (0-based vocabulary
        index), ``isthing``, ``score`` and ``area``.
    """
    if overlap_rule not in OVERLAP_RULES:
        raise ValueError(f"overlap_rule must be one of {OVERLAP_RULES}, got {overlap_rule!r}")
    if masks is None or masks.probs.device != mask_probs.device:  # (retry_if_cuda_oom moves mask_probs)
        masks = ImageMasks(mask_probs)
    height, width = mask_probs.shape[-2:]
    scores, labels = class_probs.max(-1)
    num_classes = class_probs.shape[-1] - 1
    kept = torch.nonzero((labels != num_classes) & (scores > object_mask_threshold)).flatten()
    scores, labels = scores[kept], labels[kept]

    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_probs.device)
    segments_info: List[Dict] = []
    if len(scores) == 0:
        return panoptic_seg, segments_info

    # (H, W) index (among the kept masks) of the mask with the highest score x probability
    owner = mask_probs[kept].mul_(scores[:, None, None]).argmax(0)
    owner_is_on = masks.on.gather(0, kept[owner][None])[0]  # the winning mask is on there
    # Per-mask pixel counts by one bincount each instead of an (M', H, W) comparison.
    areas = torch.bincount(owner[owner_is_on], minlength=len(kept))  # the pixels the segment gets
    original_areas = masks.areas[kept]
    if overlap_rule == "mask2former":
        won_areas = torch.bincount(owner.flatten(), minlength=len(kept))
    else:
        won_areas = areas
    survives = (areas > 0) & (original_areas > 0)
    survives &= won_areas >= overlap_threshold * original_areas.clamp(min=1)

    # Segment ids are assigned in Python (a few per image, no pixel work); the image is then
    # painted once: every pixel gets the segment id of its owning mask, if that mask is on.
    segment_of_mask = [0] * len(scores)
    stuff_segment_of_class: Dict[int, int] = {}
    thing_flags = is_thing.tolist()
    for m, category, score, area in zip(
        torch.nonzero(survives).flatten().tolist(), labels[survives].tolist(),
        scores[survives].tolist(), areas[survives].tolist(),
    ):
        thing = bool(thing_flags[category])
        if not thing and category in stuff_segment_of_class:
            segment_of_mask[m] = stuff_segment_of_class[category]
            segments_info[segment_of_mask[m] - 1]["area"] += area
            continue
        segment_of_mask[m] = len(segments_info) + 1
        segments_info.append(
            {"id": segment_of_mask[m], "category_id": category, "isthing": thing,
             "score": score, "area": area}
        )
        if not thing:
            stuff_segment_of_class[category] = segment_of_mask[m]
    segment_ids = torch.tensor(segment_of_mask, dtype=torch.int32, device=owner.device)
    panoptic_seg = torch.where(owner_is_on, segment_ids[owner], panoptic_seg)
    return panoptic_seg, segments_info


def instance_inference(
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    max_detections: int,
    is_thing: Optional[torch.Tensor] = None,
    thing_filter: str = "after_topk",
    masks: Optional[ImageMasks] = None,
) -> Instances:
    """Top-``max_detections`` (mask, class) pairs by class score x mask quality.

    Mask quality is the mean mask probability inside the binarised mask, as in Mask2Former.

    Args:
        is_thing: (K,) bool; when some classes are things, only things are detected (instance
            segmentation of a panoptic vocabulary, as COCO's instance AP counts things only);
            None or no thing at all: every class.
        thing_filter: when the things are kept, one of ``INSTANCE_THING_FILTERS``.
        masks: ``ImageMasks(mask_probs)``, shared with the other tasks (default: a new one).
    Returns:
        Instances with ``pred_masks`` (N, H, W) bool, ``pred_boxes``, ``scores`` and
        ``pred_classes`` (0-based vocabulary indices).
    """
    if thing_filter not in INSTANCE_THING_FILTERS:
        raise ValueError(f"thing_filter must be one of {INSTANCE_THING_FILTERS}, got {thing_filter!r}")
    if masks is None or masks.probs.device != mask_probs.device:  # (retry_if_cuda_oom moves mask_probs)
        masks = ImageMasks(mask_probs)
    height, width = mask_probs.shape[-2:]
    classes = torch.arange(class_probs.shape[1] - 1, device=class_probs.device)
    filter_things = is_thing is not None and bool(is_thing.any())
    if filter_things and thing_filter == "before_topk":
        classes = classes[is_thing.to(classes.device)]
    num_classes = len(classes)
    flat_scores = class_probs[:, classes].flatten()
    k = min(max_detections, flat_scores.numel())
    top_scores, top_index = flat_scores.topk(k)
    mask_index = top_index // num_classes
    labels = classes[top_index % num_classes]
    if filter_things and thing_filter == "after_topk":
        keep = is_thing.to(labels.device)[labels]
        top_scores, mask_index, labels = top_scores[keep], mask_index[keep], labels[keep]

    # Quality and boxes once per mask (a mask may be detected with several classes).
    result = Instances((height, width))
    result.pred_masks = masks.on[mask_index]
    result.pred_boxes = Boxes(masks.boxes[mask_index])
    result.scores = top_scores * masks.quality[mask_index]
    result.pred_classes = labels
    return result
