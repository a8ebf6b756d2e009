"""The Python API's input handling: images of every common array type and file depth read as
the picture they are (or refused with a reason), tasks as the CLI takes them, and thing /
stuff flags that follow the vocabulary of each call."""
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from maskclip_d2 import Predictor, get_maskclip_cfg
from maskclip_d2.predictor import parse_tasks, read_rgb_image, thing_flags

from helpers.photos import TINY

PHOTO = skimage.data.coffee()[:40, :60]  # (40, 60, 3) uint8


@pytest.mark.parametrize("convert", [
    lambda x: x / 255.0,                      # float in [0, 1] (skimage, torchvision)
    lambda x: (x / 255.0).astype(np.float32),
    lambda x: x.astype(np.float64),           # float in 0-255 (OpenCV arithmetic)
    lambda x: x.astype(np.int64),             # integers 0-255
    lambda x: x.astype(np.uint16) * 257,      # 16-bit
])
def test_arrays_of_other_dtypes_read_as_the_same_picture(convert):
    assert np.array_equal(read_rgb_image(convert(PHOTO)), PHOTO)


def test_gray_arrays_with_or_without_a_channel_axis_are_accepted():
    gray = PHOTO[..., 0]
    expected = np.repeat(gray[..., None], 3, axis=2)
    assert np.array_equal(read_rgb_image(gray), expected)
    assert np.array_equal(read_rgb_image(gray[..., None]), expected)


@pytest.mark.parametrize("array, message", [
    (np.full((4, 4, 3), 300.0), r"values in \[0, 1\] \(or 0-255\), got \[300, 300\]"),
    (np.full((4, 4, 3), -0.5), r"got \[-0.5, -0.5\]"),
    (np.full((4, 4, 3), np.nan), "NaN"),
    (np.full((4, 4, 3), 300, dtype=np.int32), "must hold values in 0-255, got 300..300"),
    (np.zeros((4, 4, 2), dtype=np.uint8), r"got an array of shape \(4, 4, 2\)"),
])
def test_arrays_that_cannot_be_read_as_is_are_refused(array, message):
    with pytest.raises(ValueError, match=message):
        read_rgb_image(array)


def test_a_16_bit_png_keeps_its_full_range(tmp_path):
    levels = np.array([0, 257, 1000, 30000, 51400, 65535], dtype=np.uint16)
    gray = np.tile(levels, (3, 1))
    path = tmp_path / "depth16.png"
    Image.fromarray(gray).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"  # really a 16-bit file
    rgb = read_rgb_image(str(path))
    assert rgb[0, :, 0].tolist() == [0, 1, 4, 117, 200, 255]
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_tasks_all_lists_and_repeats():
    assert parse_tasks(None) == parse_tasks("all") == ["semantic", "panoptic", "instance"]
    assert parse_tasks("semantic, semantic") == parse_tasks(["semantic", "semantic"]) == ["semantic"]
    assert parse_tasks(["instance", "all"]) == ["instance", "semantic", "panoptic"]
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks("depth")


def test_thing_flags_from_stuff_names_and_synonyms():
    vocabulary = ["toy rabbit, real rabbit", "sky, heaven", "grass"]
    assert thing_flags(vocabulary) == [True, True, True]
    assert thing_flags(vocabulary, stuff=["Heaven", "grass"]) == [True, False, False]
    assert thing_flags(vocabulary, is_thing=[False, True, True]) == [False, True, True]
    with pytest.raises(ValueError, match=r"\['ocean'\] are not in the vocabulary"):
        thing_flags(vocabulary, stuff=["ocean"])
    with pytest.raises(ValueError, match="one True / False per class"):
        thing_flags(vocabulary, is_thing=[True])


@pytest.fixture(scope="module")
def predictor():
    return Predictor(TINY)


class QuadrantProposals(torch.nn.Module):
    """Four crisp proposals, the quadrants of the image (logits +-10, objectness 1)."""

    def forward(self, batched_inputs, size, padded_size=None):  # quadrants of the (padded) input
        logits = torch.full((len(batched_inputs), 4, size, size), -10.0)
        half = size // 2
        for q, (rows, cols) in enumerate([(slice(0, half), slice(0, half)), (slice(0, half), slice(half, None)),
                                          (slice(half, None), slice(0, half)), (slice(half, None), slice(half, None))]):
            logits[:, q, rows, cols] = 10.0
        return logits, torch.ones(len(batched_inputs), 4)


def test_stuff_classes_are_one_region_each_and_flags_follow_every_call(monkeypatch):
    # MaskCLIP w/o RMA outputs its proposals' masks: with known proposals the segments are known.
    predictor = Predictor(get_maskclip_cfg(TINY, ["MODEL.MASKCLIP.MODE", "mask_tokens"]))
    predictor.model.proposal_network = QuadrantProposals()
    vocabulary = ["toy rabbit, real rabbit", "sky", "grass"]
    # Text embeddings made to fit this random model's mask features: quadrant 0 is the
    # rabbit, the others sky or grass, none is no-object ("other").
    text = predictor.model.text_encoder
    captured, classify = {}, text.classify
    monkeypatch.setattr(text, "classify", lambda features, embeddings, no_object=False: (
        captured.setdefault("features", features.detach()), classify(features, embeddings, no_object))[1])
    predictor(PHOTO, vocabulary=vocabulary, task="semantic")
    features = F.normalize(captured["features"][0], dim=-1)  # (4, E)
    mean = F.normalize(features[1:].mean(0), dim=0)
    text.set_class_embeddings(vocabulary + ["other"], torch.stack(
        [features[0], mean, F.normalize(mean + 0.02 * features[1], dim=0), -mean]))

    out = predictor(PHOTO, vocabulary=vocabulary, task=["panoptic", "instance"], stuff=["sky", "grass"])
    assert predictor.is_thing == [True, False, False]
    _, segments = out["panoptic_seg"]
    stuff = [s["category_id"] for s in segments if not s["isthing"]]
    assert [s["category_id"] for s in segments if s["isthing"]] == [0]
    # The class name beside Detectron2's category_id: no lookup for the user.
    assert [s["class"] for s in segments if s["isthing"]] == ["toy rabbit, real rabbit"]
    assert {s["class"] for s in segments} == {vocabulary[s["category_id"]] for s in segments}
    assert sorted(stuff) == sorted(set(stuff)) and set(stuff) <= {1, 2}
    assert sum(s["area"] for s in segments if not s["isthing"]) == 40 * 60 * 3 // 4
    assert set(out["instances"].pred_classes.tolist()) == {0}  # stuff is never an instance

    # Without flags every class is a thing again (as documented), so sky and grass are
    # instances, one per mask.
    out = predictor(PHOTO, vocabulary=vocabulary, task="panoptic")
    assert predictor.is_thing == [True, True, True]
    _, segments = out["panoptic_seg"]
    assert all(s["isthing"] for s in segments) and len(segments) == 4
    # Flags alone re-flag the current vocabulary; no arguments keep it as it is.
    predictor(PHOTO, task="semantic", is_thing=[True, True, False])
    predictor(PHOTO, task="semantic")
    assert predictor.vocabulary == vocabulary and predictor.is_thing == [True, True, False]


def test_task_all_gives_all_three_outputs(predictor):
    out = predictor(PHOTO, vocabulary=["cup", "table"], task="all")
    assert set(out) == {"sem_seg", "panoptic_seg", "instances"}
    assert out["sem_seg"].shape == (2, 40, 60)
