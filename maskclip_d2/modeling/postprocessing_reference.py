"""The post-processing as it was before it was vectorised (``postprocessing.py`` at the merge of
the paper-protocol keys), kept verbatim as the reference: tests/modeling/test_postprocessing.py
asserts the current implementation equals it, tools/benchmark_model.py times the two.
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.structures import BitMasks, Instances


# Panoptic overlap test: a kept mask's segment survives when area / original_area >= the
# overlap threshold, original_area = |mask >= 0.5|, and area =
#   "mask2former": |pixels where the mask wins the argmax| (Mask2Former's and the authors' test);
#   "visible":     |pixels where it wins AND mask >= 0.5| (the pixels the segment really gets).
OVERLAP_RULES = ("mask2former", "visible")
# Instance inference on a vocabulary with things and stuff:
#   "after_topk":  top-k (mask, class) pairs over all classes, then keep the things
#                  (Mask2Former's and the authors'; fewer than k detections may remain);
#   "before_topk": top-k over the thing classes only (always k detections when there are enough).
INSTANCE_THING_FILTERS = ("after_topk", "before_topk")


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
) -> Tuple[torch.Tensor, List[Dict]]:
    """Non-overlapping segments: each pixel goes to the kept mask with the highest
    score x mask probability; stuff segments of one class are merged.

    Args:
        is_thing: (K,) bool, whether each vocabulary class is a thing (else stuff).
        object_mask_threshold: masks whose best class score is below this are dropped.
        overlap_threshold: a segment is dropped when less than this fraction of its mask
            (mask_prob >= 0.5) survives the per-pixel assignment.
        overlap_rule: how the surviving fraction is counted, one of ``OVERLAP_RULES``.
    Returns:
        (segment ids (H, W) int32 with 0 = void, segments_info) as Detectron2's
        ``panoptic_seg``; segment dicts have ``id``, ``category_id`` (0-based vocabulary
        index), ``isthing``, ``score`` and ``area``.
    """
    if overlap_rule not in OVERLAP_RULES:
        raise ValueError(f"overlap_rule must be one of {OVERLAP_RULES}, got {overlap_rule!r}")
    height, width = mask_probs.shape[-2:]
    scores, labels = class_probs.max(-1)
    num_classes = class_probs.shape[-1] - 1
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    scores, labels, mask_probs = scores[keep], labels[keep], mask_probs[keep]

    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_probs.device)
    segments_info: List[Dict] = []
    if len(scores) == 0:
        return panoptic_seg, segments_info

    owner = (scores[:, None, None] * mask_probs).argmax(0)  # (H, W) index of the winning mask
    mask_ids = torch.arange(len(scores), device=owner.device)
    owned = owner[None] == mask_ids[:, None, None]  # (M', H, W)
    on = mask_probs >= 0.5
    areas = (owned & on).flatten(1).sum(1)  # the pixels the segment gets
    original_areas = on.flatten(1).sum(1)
    won_areas = owned.flatten(1).sum(1) if overlap_rule == "mask2former" else areas
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
    owner_is_on = on.gather(0, owner[None])[0]
    panoptic_seg = torch.where(owner_is_on, segment_ids[owner], panoptic_seg)
    return panoptic_seg, segments_info


def instance_inference(
    class_probs: torch.Tensor,
    mask_probs: torch.Tensor,
    max_detections: int,
    is_thing: Optional[torch.Tensor] = None,
    thing_filter: str = "after_topk",
) -> Instances:
    """Top-``max_detections`` (mask, class) pairs by class score x mask quality.

    Mask quality is the mean mask probability inside the binarised mask, as in Mask2Former.

    Args:
        is_thing: (K,) bool; when some classes are things, only things are detected (instance
            segmentation of a panoptic vocabulary, as COCO's instance AP counts things only);
            None or no thing at all: every class.
        thing_filter: when the things are kept, one of ``INSTANCE_THING_FILTERS``.
    Returns:
        Instances with ``pred_masks`` (N, H, W) bool, ``pred_boxes``, ``scores`` and
        ``pred_classes`` (0-based vocabulary indices).
    """
    if thing_filter not in INSTANCE_THING_FILTERS:
        raise ValueError(f"thing_filter must be one of {INSTANCE_THING_FILTERS}, got {thing_filter!r}")
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

    masks = mask_probs[mask_index]
    binary = masks >= 0.5
    mask_quality = (masks * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp(min=1)

    result = Instances((height, width))
    result.pred_masks = binary
    result.pred_boxes = BitMasks(binary).get_bounding_boxes()
    result.scores = top_scores * mask_quality
    result.pred_classes = labels
    return result
