"""ADE20K-847 semantic val from a tiny full-release download."""
import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from maskclip_d2.data.datasets.register_ade20k_full import register_all_ade20k_full
from helpers.tiny_datasets import (
    ADE_FULL_BIG,
    ADE_FULL_NOT_SHIPPED,
    ADE_FULL_STEMS,
    ade_full_big_image,
    ade_full_class_maps,
    mtimes,
    run_prepare,
    write_ade20k_full,
)


@pytest.fixture
def full_root(tmp_path):
    write_ade20k_full(tmp_path)
    run_prepare("prepare_ade20k_full", tmp_path)
    register_all_ade20k_full(str(tmp_path))
    return tmp_path / "ADE20K_2021_17_01"


def test_metadata_847_shipped_classes(full_root):
    meta = MetadataCatalog.get("ade20k_full_sem_seg_val")
    assert len(meta.stuff_classes) == 847
    # Mask2Former's ADE20K_SEM_SEG_FULL_CATEGORIES: id = class value k, in their order
    assert meta.stuff_classes[:3] == ["wall", "building, edifice", "sky"]
    assert meta.stuff_dataset_id_to_contiguous_id[2978] == 0  # "wall"
    assert ADE_FULL_NOT_SHIPPED not in meta.stuff_dataset_id_to_contiguous_id
    assert meta.ignore_label == 65535 and meta.evaluator_type == "sem_seg"


def test_records_and_labels(full_root):
    records = DatasetCatalog.get("ade20k_full_sem_seg_val")
    assert [r["file_name"] for r in records] == [  # validation images only
        str(full_root / f"images_detectron2/validation/{s}.jpg") for s in ADE_FULL_STEMS[1:]]
    for record, cls in zip(records[:2], ade_full_class_maps()[1:3]):  # 24 x 32: not resized
        label = np.asarray(Image.open(record["sem_seg_file_name"]))
        assert label.shape == cls.shape
        # wall 0, building 1, sky 2; the class outside the 847 and unlabeled pixels: 65535
        expected = np.select([cls == 2978, cls == 312, cls == 2420], [0, 1, 2], 65535)
        np.testing.assert_array_equal(label, expected)
    assert (np.asarray(Image.open(records[0]["sem_seg_file_name"]))[:, 16:] == 65535).all()


def test_val_images_with_a_short_side_over_512_are_resized_as_maskformer_does(full_root):
    """MaskFormer's prepare_ade20k_full_sem_seg.py: short side 512, long side
    round(long / short * 512), bilinear image, nearest labels (OpenCV)."""
    record = DatasetCatalog.get("ade20k_full_sem_seg_val")[2]
    height, width = 512, round(ADE_FULL_BIG[1] / ADE_FULL_BIG[0] * 512)  # 520 x 600 -> 512 x 591
    assert (height, width) == (512, 591)
    label = np.asarray(Image.open(record["sem_seg_file_name"]))
    classes = cv2.resize(ade_full_class_maps()[3].astype(np.int32), (width, height),
                         interpolation=cv2.INTER_NEAREST)
    expected = np.select([classes == 2978, classes == 2420, classes == 976], [0, 2, 5], 65535)
    np.testing.assert_array_equal(label, expected)
    assert set(np.unique(label)) == {0, 2, 5}  # wall, sky, floor; nothing lost or ignored
    with Image.open(record["file_name"]) as img:
        assert img.size == (width, height)
        image = np.asarray(img.convert("RGB")).astype(np.float64)
    reference = cv2.resize(ade_full_big_image(), (width, height), interpolation=cv2.INTER_LINEAR)
    assert np.abs(image - reference).mean() < 2  # equal up to JPEG


def test_prepare_rerun_rewrites_nothing(full_root):
    before = mtimes(full_root / "annotations_detectron2")
    run_prepare("prepare_ade20k_full", full_root.parent)
    assert mtimes(full_root / "annotations_detectron2") == before


def test_missing_folder_fails_at_load_naming_folder_and_command(tmp_path):
    register_all_ade20k_full(str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("ade20k_full_sem_seg_val")
    assert str(tmp_path / "ADE20K_2021_17_01") in str(err.value)
    assert "python datasets/prepare_ade20k_full.py" in str(err.value)
