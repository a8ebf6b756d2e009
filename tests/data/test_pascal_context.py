"""PASCAL Context 59 / 459 val from a tiny official-format download."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from maskclip_d2.data.datasets.register_pascal_context import register_all_pascal_context
from helpers.tiny_datasets import (
    PASCAL_VAL_STEMS,
    mtimes,
    pascal_context_label_maps,
    run_prepare,
    write_pascal_context,
)


@pytest.fixture
def pc_root(tmp_path):
    write_pascal_context(tmp_path)
    run_prepare("prepare_pascal_context", tmp_path)
    register_all_pascal_context(str(tmp_path))
    return tmp_path


def test_metadata_59_and_459_classes(pc_root):
    m59 = MetadataCatalog.get("pascal_context_59_sem_seg_val")
    m459 = MetadataCatalog.get("pascal_context_459_sem_seg_val")
    assert len(m59.stuff_classes) == 59 and len(m459.stuff_classes) == 459
    assert m59.stuff_classes[:2] == ["aeroplane", "bag"]
    assert "potted plant" in m59.stuff_classes and "tv monitor" in m59.stuff_classes
    assert m459.stuff_classes[:3] == ["accordion", "aeroplane", "air conditioner"]
    assert m459.stuff_classes[-1] == "wool" and "potted plant" in m459.stuff_classes
    assert (m59.ignore_label, m459.ignore_label) == (255, 65535)
    assert m59.evaluator_type == m459.evaluator_type == "sem_seg"
    assert m459.stuff_dataset_id_to_contiguous_id[458] == 458


def test_records_only_val_images_and_labels(pc_root):
    maps = pascal_context_label_maps()
    for n, ext in ((59, "png"), (459, "tif")):
        records = DatasetCatalog.get(f"pascal_context_{n}_sem_seg_val")
        assert [r["file_name"] for r in records] == [
            str(pc_root / f"VOCdevkit/VOC2010/JPEGImages/{s}.jpg") for s in PASCAL_VAL_STEMS]
        assert records[0]["sem_seg_file_name"] == str(
            pc_root / f"pascal_context/annotations_detectron2/pc{n}_val/{PASCAL_VAL_STEMS[0]}.{ext}")
    first59 = np.asarray(Image.open(DatasetCatalog.get("pascal_context_59_sem_seg_val")[0]["sem_seg_file_name"]))
    assert (first59[:, :8] == 0).all() and (first59[:, 8:16] == 1).all()  # aeroplane, bag
    assert (first59[:, 16:] == 255).all()  # a non-59 class and unlabeled: ignored
    second459 = np.asarray(Image.open(DatasetCatalog.get("pascal_context_459_sem_seg_val")[1]["sem_seg_file_name"]))
    np.testing.assert_array_equal(second459, maps[1].astype(np.int64) - 1)
    first459 = np.asarray(Image.open(DatasetCatalog.get("pascal_context_459_sem_seg_val")[0]["sem_seg_file_name"]))
    assert (first459[:, 24:] == 65535).all() and (first459[:, 16:24] == 2).all()


def test_prepare_rerun_rewrites_nothing(pc_root):
    before = mtimes(pc_root / "pascal_context")
    run_prepare("prepare_pascal_context", pc_root)
    assert mtimes(pc_root / "pascal_context") == before


def test_partial_download_names_the_missing_mat(tmp_path):
    pc = write_pascal_context(tmp_path)
    (pc / "trainval" / f"{PASCAL_VAL_STEMS[1]}.mat").unlink()
    with pytest.raises(FileNotFoundError, match=f"{PASCAL_VAL_STEMS[1]}.mat"):
        run_prepare("prepare_pascal_context", tmp_path)


def test_missing_folder_fails_at_load_naming_folder_and_command(tmp_path):
    register_all_pascal_context(str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("pascal_context_459_sem_seg_val")
    assert str(tmp_path / "pascal_context") in str(err.value)
    assert "python datasets/prepare_pascal_context.py" in str(err.value)
