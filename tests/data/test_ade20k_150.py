"""ADE20K-150 panoptic / semantic / instance val from a tiny official-format download."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image

from maskclip_d2.data.datasets.register_ade20k_150 import register_all_ade20k_150
from helpers.tiny_datasets import (
    ade_raw_instances,
    ade_raw_semantic,
    ade_things,
    mtimes,
    run_prepare,
    write_ade20k_150,
)


@pytest.fixture
def ade_root(tmp_path):
    write_ade20k_150(tmp_path)
    run_prepare("prepare_ade20k_150", tmp_path)
    register_all_ade20k_150(str(tmp_path))
    return tmp_path / "ADEChallengeData2016"


def test_metadata_150_classes_100_things_50_stuff(ade_root):
    pan = MetadataCatalog.get("ade20k_panoptic_val")
    assert len(pan.stuff_classes) == len(pan.thing_classes) == 150
    things = pan.thing_dataset_id_to_contiguous_id
    assert sorted(things) == [s - 1 for s in ade_things()]  # the classes of categoryMapping
    assert len(things) == 100 and things[50] == 50  # dataset id = semantic id - 1
    assert len(set(pan.stuff_dataset_id_to_contiguous_id) - set(things)) == 50
    # Mask2Former's names (the authors'), not the CSV's: "windowpane;window" -> "window "
    assert pan.stuff_classes[:3] == ["wall", "building", "sky"]
    assert pan.stuff_classes[8] == "window " and pan.stuff_classes[50] == "refrigerator, icebox"
    assert pan.evaluator_type == "coco_panoptic_seg"
    assert pan.panoptic_json == str(ade_root / "ade20k_panoptic_val.json")

    sem = MetadataCatalog.get("ade20k_sem_seg_val")
    assert sem.stuff_classes == pan.stuff_classes and sem.ignore_label == 255
    assert sem.evaluator_type == "sem_seg"
    assert sem.sem_seg_root == str(ade_root / "annotations_detectron2/validation")

    ins = MetadataCatalog.get("ade20k_instance_val")
    assert len(ins.thing_classes) == 100 and ins.thing_classes[0] == "bed"  # semantic id 8
    assert ins.thing_dataset_id_to_contiguous_id == {s - 1: i for i, s in enumerate(ade_things())}
    assert ins.thing_dataset_id_to_contiguous_id[50] == 29  # "refrigerator, icebox"
    assert ins.evaluator_type == "coco"
    # Mask2Former's colours (the palette of the ADE20K benchmark)
    assert pan.stuff_colors[:3] == [[120, 120, 120], [180, 120, 120], [6, 230, 230]]


def test_semantic_records_and_labels(ade_root):
    records = DatasetCatalog.get("ade20k_sem_seg_val")
    assert [r["file_name"] for r in records] == [
        str(ade_root / f"images/validation/ADE_val_0000000{i}.jpg") for i in (1, 2)]
    for record, raw in zip(records, ade_raw_semantic()):
        label = np.asarray(Image.open(record["sem_seg_file_name"]))
        expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
        np.testing.assert_array_equal(label, expected)


def test_panoptic_records_and_pngs(ade_root):
    records = DatasetCatalog.get("ade20k_panoptic_val")
    first = records[0]
    assert first["image_id"] == 1 and (first["height"], first["width"]) == (24, 32)
    assert first["pan_seg_file_name"] == str(ade_root / "ade20k_panoptic_val/ADE_val_00000001.png")
    assert first["sem_seg_file_name"] == str(ade_root / "annotations_detectron2/validation/ADE_val_00000001.png")
    summary = [(s["category_id"], s["isthing"], s["area"]) for s in first["segments_info"]]
    # stuff 0 "wall" (top half), stuff 2 "sky" (bottom left), two instances of thing 50
    # "refrigerator, icebox" (bottom right)
    assert summary == [(0, False, 384), (2, False, 192), (50, True, 96), (50, True, 96)]
    pan = rgb2id(np.asarray(Image.open(first["pan_seg_file_name"])).astype(np.uint32))
    ids = {s["id"]: s for s in first["segments_info"]}
    assert set(np.unique(pan)) == set(ids)
    assert (pan[12:, 16:24] == pan[12, 16]).all() and pan[12, 16] != pan[12, 24]
    second = records[1]["segments_info"]
    assert [(s["category_id"], s["isthing"], s["bbox"]) for s in second] == [
        (1, False, [0, 0, 32, 24]), (57, True, [8, 8, 16, 8])]  # "building", "pillow"
    assert second[0]["area"] == 24 * 32 - 8 * 16  # the thing is pasted over the stuff


def test_instance_records(ade_root):
    records = DatasetCatalog.get("ade20k_instance_val")
    assert [len(r["annotations"]) for r in records] == [2, 1]
    # contiguous among the 100 things: "refrigerator, icebox" 29, "pillow" 33
    assert [a["category_id"] for r in records for a in r["annotations"]] == [29, 29, 33]
    raw = ade_raw_instances()[0]
    for ann, inst in zip(records[0]["annotations"], (1, 2)):
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        np.testing.assert_array_equal(mask, raw[..., 1] == inst)
        assert ann["iscrowd"] == 0
    assert records[0]["annotations"][1]["bbox"] == [24, 12, 8, 12]


def test_prepare_rerun_rewrites_nothing(ade_root):
    before = mtimes(ade_root)
    run_prepare("prepare_ade20k_150", ade_root.parent)
    assert mtimes(ade_root) == before


def test_missing_instance_download_is_named(tmp_path):
    write_ade20k_150(tmp_path)
    (tmp_path / "ADEChallengeData2016/categoryMapping.txt").unlink()
    with pytest.raises(FileNotFoundError, match="categoryMapping.txt"):
        run_prepare("prepare_ade20k_150", tmp_path)


@pytest.mark.parametrize("name", ["ade20k_panoptic_val", "ade20k_sem_seg_val", "ade20k_instance_val"])
def test_missing_folder_fails_at_load_naming_folder_and_command(tmp_path, name):
    register_all_ade20k_150(str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get(name)
    assert str(tmp_path / "ADEChallengeData2016") in str(err.value)
    assert "python datasets/prepare_ade20k_150.py" in str(err.value)
