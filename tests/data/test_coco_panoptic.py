"""COCO panoptic: prepare a tiny official-format download, register it, read it back."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from maskclip_d2.data.datasets.register_coco_panoptic import register_all_coco_panoptic
from helpers.tiny_datasets import COCO_STUFF_IDS, COCO_THING_IDS, mtimes, run_prepare, write_coco_panoptic


@pytest.fixture
def coco_root(tmp_path, monkeypatch):
    write_coco_panoptic(tmp_path, splits=("train", "val"))
    run_prepare("prepare_coco_panoptic", tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_all_coco_panoptic()  # reads DETECTRON2_DATASETS, like the import-time call
    return tmp_path


def test_records_have_contiguous_ids_and_semantic_labels(coco_root):
    records = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert [r["image_id"] for r in records] == [139, 285]
    r = records[0]
    assert r["file_name"] == str(coco_root / "coco/val2017/000000000139.jpg")
    assert r["pan_seg_file_name"] == str(coco_root / "coco/panoptic_val2017/000000000139.png")
    assert r["sem_seg_file_name"] == str(coco_root / "coco/panoptic_semseg_val2017/000000000139.png")
    assert (r["height"], r["width"]) == (24, 32)
    # dataset ids 92 "banner" (stuff), 1 "person" and 3 "car" (things) -> contiguous 80, 0, 2
    assert [(s["id"], s["category_id"], s["isthing"]) for s in r["segments_info"]] == [
        (5, 80, False), (7, 0, True), (9, 2, True)]
    sem = np.asarray(Image.open(r["sem_seg_file_name"]))
    assert sem.dtype == np.uint8 and sem.shape == (24, 32)
    assert (sem[:12] == 80).all() and (sem[12:, :16] == 0).all()
    assert (sem[16:, 24:] == 2).all()  # crowd regions keep their class
    assert (sem[12:16, 16:] == 255).all() and (sem[16:, 16:24] == 255).all()  # void
    train = DatasetCatalog.get("coco_2017_train_panoptic")
    assert train[0]["file_name"] == str(coco_root / "coco/train2017/000000000139.jpg")


def test_metadata_has_the_133_raw_coco_names_replacing_detectron2s(coco_root):
    for name in ("coco_2017_train_panoptic", "coco_2017_val_panoptic_with_sem_seg"):
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == len(meta.thing_classes) == 133
        assert meta.evaluator_type == "coco_panoptic_seg"
        assert meta.thing_dataset_id_to_contiguous_id == {d: i for i, d in enumerate(COCO_THING_IDS)}
        assert meta.stuff_dataset_id_to_contiguous_id[92] == 80
        assert len(meta.stuff_dataset_id_to_contiguous_id) == 133
        # Detectron2's COCO_CATEGORIES names, raw as the MaskCLIP authors feed them to CLIP
        assert meta.stuff_classes[:2] == ["person", "bicycle"]
        assert meta.stuff_classes[80:84] == ["banner", "blanket", "bridge", "cardboard"]
        assert meta.stuff_classes[-1] == "rug-merged" and "wall-other-merged" in meta.stuff_classes
        assert meta.stuff_colors[80] == [255, 255, 128]  # COCO_CATEGORIES' colour of "banner"
        split = "train" if "train" in name else "val"
        assert meta.panoptic_root == str(coco_root / f"coco/panoptic_{split}2017")
        assert meta.ignore_label == 255 and meta.label_divisor == 1000
    assert len(COCO_STUFF_IDS) == 53


def test_prepare_rerun_rewrites_nothing(coco_root):
    before = mtimes(coco_root / "coco")
    run_prepare("prepare_coco_panoptic", coco_root)
    assert mtimes(coco_root / "coco") == before


def test_partial_download_names_the_missing_file(tmp_path):
    write_coco_panoptic(tmp_path)
    missing = tmp_path / "coco/panoptic_val2017/000000000285.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        run_prepare("prepare_coco_panoptic", tmp_path, "--splits", "val")


def test_missing_folder_fails_at_load_naming_folder_and_command(tmp_path):
    register_all_coco_panoptic(str(tmp_path))  # registering never needs the data
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert str(tmp_path / "coco") in str(err.value)
    assert "python datasets/prepare_coco_panoptic.py" in str(err.value)
