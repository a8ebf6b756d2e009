"""Post-processing equals the straightforward version it replaced (postprocessing_reference.py):
panoptic segments and ids, semantic scores, instances (masks, boxes, scores, classes), for
both overlap rules and thing filters, with and without work shared between the tasks."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks

from maskclip_d2.modeling import postprocessing_reference as reference
from maskclip_d2.modeling.postprocessing import (
    ImageMasks,
    instance_inference,
    mask_boxes,
    panoptic_inference,
    semantic_inference,
)


def inputs(num_masks=12, num_classes=7, height=37, width=53, seed=0):
    """Peaky class probabilities (some masks won by no-object) and smooth masks, with an empty
    mask, a full one and a duplicate."""
    g = torch.Generator().manual_seed(seed)
    class_probs = (torch.randn(num_masks, num_classes + 1, generator=g) * 3).softmax(-1)
    low = torch.randn(num_masks, 1, 5, 7, generator=g) * 6 - 4  # each mask on a part of the image
    mask_probs = F.interpolate(low, (height, width), mode="bilinear", align_corners=False)[:, 0].sigmoid()
    mask_probs[0] = 0.1  # empty
    mask_probs[1] = 0.55  # everywhere, weakly
    mask_probs[2] = mask_probs[3]  # the same mask twice
    return class_probs, mask_probs


THINGS = {
    "mixed": lambda k: torch.arange(k) % 3 != 0,
    "all things": lambda k: torch.ones(k, dtype=torch.bool),
    "all stuff": lambda k: torch.zeros(k, dtype=torch.bool),
}


def assert_panoptic_equal(actual, expected):
    assert torch.equal(actual[0], expected[0])
    assert actual[1] == expected[1]


def assert_instances_equal(actual, expected):
    assert actual.image_size == expected.image_size
    assert torch.equal(actual.pred_masks, expected.pred_masks)
    assert torch.equal(actual.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(actual.scores, expected.scores)
    assert torch.equal(actual.pred_classes, expected.pred_classes)


@pytest.mark.parametrize("seed", [0, 1, 3])
@pytest.mark.parametrize("things", list(THINGS))
@pytest.mark.parametrize("overlap_rule", ["mask2former", "visible"])
@pytest.mark.parametrize("thresholds", [(0.3, 0.5), (0.0, 0.3), (0.999, 0.5)])
def test_panoptic_equals_the_reference(seed, things, overlap_rule, thresholds):
    class_probs, mask_probs = inputs(seed=seed)
    is_thing = THINGS[things](class_probs.shape[1] - 1)
    args = (class_probs, mask_probs, is_thing, *thresholds, overlap_rule)
    expected = reference.panoptic_inference(*args)
    assert_panoptic_equal(panoptic_inference(*args), expected)
    assert_panoptic_equal(panoptic_inference(*args, masks=ImageMasks(mask_probs)), expected)
    if thresholds[0] < 0.99:
        assert expected[1]  # the case has segments


@pytest.mark.parametrize("seed", [0, 1, 3])
@pytest.mark.parametrize("things", list(THINGS))
@pytest.mark.parametrize("thing_filter", ["after_topk", "before_topk"])
@pytest.mark.parametrize("max_detections", [5, 100])
def test_instances_equal_the_reference(seed, things, thing_filter, max_detections):
    class_probs, mask_probs = inputs(seed=seed)
    is_thing = THINGS[things](class_probs.shape[1] - 1)
    args = (class_probs, mask_probs, max_detections, is_thing, thing_filter)
    expected = reference.instance_inference(*args)
    shared = ImageMasks(mask_probs)
    panoptic_inference(class_probs, mask_probs, is_thing, 0.3, 0.5, masks=shared)  # shared first
    assert_instances_equal(instance_inference(*args), expected)
    assert_instances_equal(instance_inference(*args, masks=shared), expected)


def test_semantic_equals_the_reference():
    class_probs, mask_probs = inputs()
    assert torch.equal(semantic_inference(class_probs, mask_probs),
                       reference.semantic_inference(class_probs, mask_probs))


def test_boxes_are_detectron2s():
    _, mask_probs = inputs(num_masks=20)
    on = mask_probs >= 0.5
    on[4] = False
    on[5] = False
    on[5, 10, 20] = True  # a single pixel
    assert torch.equal(mask_boxes(on), BitMasks(on).get_bounding_boxes().tensor)
    assert mask_boxes(on[:0]).shape == (0, 4)


def test_no_mask_kept_and_no_detection():
    class_probs, mask_probs = inputs()
    is_thing = THINGS["mixed"](class_probs.shape[1] - 1)
    seg, segments = panoptic_inference(class_probs, mask_probs, is_thing, 1.0, 0.5)
    assert segments == [] and not seg.any()
    empty = instance_inference(class_probs[:0], mask_probs[:0], 10, is_thing)
    assert len(empty) == 0 and empty.pred_masks.shape == (0, 37, 53)


@pytest.mark.parametrize("masks", [13, 0])
def test_mask_areas_and_quality_are_those_of_all_masks_at_once_whatever_the_chunks(monkeypatch, masks):
    """ImageMasks reduces a few masks at a time (postprocessing.CHUNK_ELEMENTS) to bound its
    temporaries: the same areas, the same qualities up to rounding, empty masks and none too."""
    import maskclip_d2.modeling.postprocessing as postprocessing

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(masks, 40, 30, generator=g)
    if masks:
        probs[3] = 0.1  # an empty mask: area 0, quality 0
    on = probs >= 0.5
    areas = torch.count_nonzero(on.flatten(1), dim=1)
    quality = torch.where(on, probs, 0.0).flatten(1).sum(1) / areas.clamp(min=1)
    for chunk in (1, 1200 * 2, 1200 * 5, 2**22):  # a mask, 2 masks, 5 masks (13 = 5 + 5 + 3), all
        monkeypatch.setattr(postprocessing, "CHUNK_ELEMENTS", chunk)
        image = ImageMasks(probs)
        assert torch.equal(image.areas, areas)
        torch.testing.assert_close(image.quality, quality, rtol=1e-6, atol=1e-7)
        assert image.areas.shape == image.quality.shape == (masks,)
