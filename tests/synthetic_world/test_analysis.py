"""mask_token_view: what a mask class token sees of a segment, on a scene worked out by hand."""
import json

import numpy as np
import pytest
from panopticapi.utils import id2rgb
from PIL import Image

from maskclip_d2.synthetic_world.analysis import mask_token_view, pixel_confusion


def test_a_thing_in_one_patch_and_the_stuff_around_it(tmp_path):
    # 16 x 16 scene, 8 px patches (2 x 2 grid): a 4 x 4 thing in the top-left patch, stuff elsewhere
    ids = np.full((16, 16), 1, dtype=np.uint32)
    ids[0:4, 0:4] = 2
    (tmp_path / "panoptic" / "val_all").mkdir(parents=True)
    Image.fromarray(id2rgb(ids)).save(tmp_path / "panoptic" / "val_all" / "000000.png")
    panoptic = {
        "categories": [{"id": 1, "name": "grass", "isthing": 0}, {"id": 2, "name": "red blob", "isthing": 1}],
        "annotations": [{"image_id": 0, "file_name": "000000.png", "segments_info": [
            {"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]}],
    }
    (tmp_path / "panoptic_val_all.json").write_text(json.dumps(panoptic))
    view = mask_token_view(str(tmp_path), "val_all", patch_size=8)
    # the thing's token sees 1 of 4 patches, of whose 64 pixels 16 are the thing
    assert view["thing"] == pytest.approx({"patches": 25.0, "purity": 25.0})
    # the stuff touches all 4 patches: 240 of their 256 pixels are stuff
    assert view["stuff"] == pytest.approx({"patches": 100.0, "purity": 100.0 * 240 / 256})
    # a 4 px grid separates them: the thing is one whole patch of 16
    view = mask_token_view(str(tmp_path), "val_all", patch_size=4)
    assert view["thing"] == pytest.approx({"patches": 100.0 / 16, "purity": 100.0})
    assert view["stuff"] == pytest.approx({"patches": 100.0 * 15 / 16, "purity": 100.0})


def test_pixel_confusion_counts_annotated_pixels_by_predicted_class(tmp_path):
    import pycocotools.mask as mask_util

    (tmp_path / "semantic" / "val_all").mkdir(parents=True)
    gt = np.full((4, 4), 255, dtype=np.uint8)  # void row 0
    gt[1:, :2], gt[1:, 2:] = 0, 1  # class 0 ("a") left, class 1 ("b") right: 6 pixels each
    Image.fromarray(gt).save(tmp_path / "semantic" / "val_all" / "000000.png")
    (tmp_path / "categories.json").write_text(json.dumps({"categories": [{"id": 1, "name": "a"},
                                                                         {"id": 2, "name": "b"}]}))
    predicted_a = np.zeros((4, 4), dtype=np.uint8)
    predicted_a[:, :3] = 1  # "a" over columns 0-2: all of a's pixels, 3 of b's (and void)
    predictions = []
    for dataset_id, mask in ((1, predicted_a), (2, 1 - predicted_a)):
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        predictions.append({"file_name": "/somewhere/images/val/000000.jpg", "category_id": dataset_id,
                            "segmentation": rle})
    (tmp_path / "sem_seg_predictions.json").write_text(json.dumps(predictions))
    table = pixel_confusion(str(tmp_path), str(tmp_path / "sem_seg_predictions.json"))
    assert table == {"a": {"a": 100.0, "b": 0.0}, "b": {"a": 50.0, "b": 50.0}}
    assert pixel_confusion(str(tmp_path), str(tmp_path / "sem_seg_predictions.json"), classes=["b"]) == {
        "b": {"a": 50.0, "b": 50.0}}
