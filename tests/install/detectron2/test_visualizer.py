"""detectron2.utils.visualizer.Visualizer on a real photograph (skimage's astronaut, resized to
96x144): semantic, panoptic and instance drawings change the drawn regions, blend with the
documented alpha, and leave the image untouched far from them."""
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

H, W = 96, 144


@pytest.fixture(scope="module")
def photo():
    img = Image.fromarray(skimage.data.astronaut()).resize((W, H), Image.BILINEAR)
    img = np.asarray(img).copy()
    assert img.shape == (H, W, 3) and img.dtype == np.uint8 and img.std() > 20
    return img


@pytest.fixture
def metadata(register_dataset):
    def _register(name):
        from detectron2.data import DatasetCatalog

        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(
            thing_classes=["person", "rocket"],
            thing_colors=[(255, 0, 0), (0, 255, 0)],
            stuff_classes=["sky", "grass", "wall"],
            stuff_colors=[(0, 0, 255), (255, 255, 0), (0, 255, 255)],
        )

    return MetadataCatalog.get(register_dataset("d2test_vis", _register))


def _changed(out, img):
    return np.abs(out.astype(np.int64) - img.astype(np.int64)).sum(-1) > 0


def test_draw_sem_seg(photo, metadata):
    sem = torch.full((H, W), 255, dtype=torch.long)  # 255: not a class, not drawn
    sem[40:92, 4:64] = 2  # "wall", colour (0, 255, 255)
    vis = Visualizer(photo, metadata, scale=1.0)
    out = vis.draw_sem_seg(sem, alpha=0.8).get_image()
    assert out.shape == photo.shape and out.dtype == np.uint8
    changed = _changed(out, photo)
    assert changed[40:92, 4:64].mean() > 0.95
    # far from the region: untouched
    assert not changed[:, 80:].any() and not changed[:32, :].any()
    # interior corner of the region (away from the outline and the centred label): alpha blend
    patch = (slice(44, 48), slice(8, 16))
    expected = 0.2 * photo[patch].astype(np.float64) + 0.8 * np.array([0, 255, 255])
    assert np.abs(out[patch] - expected).max() <= 3


def test_draw_panoptic_seg(photo, metadata):
    seg = torch.zeros((H, W), dtype=torch.int32)  # 0: no segment (not in segments_info)
    seg[48:, :60] = 1  # stuff "grass"
    seg[8:40, 12:44] = 2  # thing "person"
    seg[54:88, 16:44] = 3  # thing "rocket"
    segments_info = [
        {"id": 1, "category_id": 1, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True, "score": 0.9},
        {"id": 3, "category_id": 1, "isthing": True, "score": 0.8},
    ]
    vis = Visualizer(photo, metadata, scale=1.0)
    out = vis.draw_panoptic_seg(seg, segments_info, alpha=0.7).get_image()
    assert out.shape == photo.shape
    changed = _changed(out, photo)
    for sid in (1, 2, 3):
        assert changed[seg.numpy() == sid].mean() > 0.95, sid
    # the unlabelled (id 0) part, away from the segments: untouched
    assert not changed[:, 72:].any() and not changed[:4, :].any()
    # the stuff region is blended with its colour (yellow) at alpha 0.7, away from the label
    patch = (slice(58, 70), slice(2, 14))  # left of the rocket
    expected = 0.3 * photo[patch].astype(np.float64) + 0.7 * np.array([255, 255, 0])
    assert np.abs(out[patch] - expected).max() <= 3


def test_draw_instance_predictions(photo, metadata):
    masks = torch.zeros((2, H, W), dtype=torch.bool)
    masks[0, 30:66, 10:44] = True
    masks[1, 60:90, 50:74] = True
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor([[10.0, 30.0, 44.0, 66.0], [50.0, 60.0, 74.0, 90.0]]))
    inst.scores = torch.tensor([0.95, 0.6])
    inst.pred_classes = torch.tensor([0, 1])
    inst.pred_masks = masks
    vis = Visualizer(photo, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    out = vis.draw_instance_predictions(inst).get_image()
    assert out.shape == photo.shape
    changed = _changed(out, photo)
    for m in masks.numpy():
        assert changed[m].mean() > 0.95
    # far from both instances (and their labels): untouched
    assert not changed[:, 136:].any() and not changed[:24, :].any()


def test_draw_instance_boxes_only_keeps_box_interior(photo, metadata):
    """Without masks only the outline (and the label) is drawn: the box interior stays."""
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor([[20.0, 30.0, 100.0, 88.0]]))
    inst.scores = torch.tensor([0.9])
    inst.pred_classes = torch.tensor([1])
    out = Visualizer(photo, metadata, scale=1.0).draw_instance_predictions(inst).get_image()
    assert out.shape == photo.shape
    changed = _changed(out, photo)
    assert changed[30:89, 20].all() and changed[88, 20:101].all()  # outline
    assert not changed[50:82, 28:94].any()  # interior, away from the label
    assert not changed[:, 110:].any() and not changed[:24, :].any()
