"""ADE20K-847 semantic val from a tiny full-release download."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from maskclip_d2.data.datasets.register_ade20k_full import register_all_ade20k_full
from tiny_datasets import ade_full_class_maps, mtimes, run_prepare, write_ade20k_full


@pytest.fixture
def full_root(tmp_path):
    write_ade20k_full(tmp_path)
    run_prepare("prepare_ade20k_full", tmp_path)
    register_all_ade20k_full(str(tmp_path))
    return tmp_path / "ADE20K_2021_17_01"


def test_metadata_847_classes_in_both_splits(full_root):
    meta = MetadataCatalog.get("ade20k_full_sem_seg_val")
    assert len(meta.stuff_classes) == 847
    assert meta.stuff_classes[0] == "object5, synonym5"  # most training pixels
    assert meta.stuff_classes[1] == "object1, synonym1"  # then by class value
    assert "object848, synonym848" not in meta.stuff_classes  # training only
    assert meta.stuff_dataset_id_to_contiguous_id[5] == 0
    assert meta.ignore_label == 65535 and meta.evaluator_type == "sem_seg"


def test_records_and_labels(full_root):
    records = DatasetCatalog.get("ade20k_full_sem_seg_val")
    assert [r["file_name"] for r in records] == [
        str(full_root / f"images_detectron2/validation/ADE_frame_0000000{k}.jpg") for k in (2, 3)]
    to_contiguous = MetadataCatalog.get("ade20k_full_sem_seg_val").stuff_dataset_id_to_contiguous_id
    for record, cls in zip(records, ade_full_class_maps()[2:]):
        label = np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64)
        expected = np.vectorize(lambda k: to_contiguous.get(k, 65535))(cls)
        np.testing.assert_array_equal(label, expected)
    assert (np.asarray(Image.open(records[1]["sem_seg_file_name"]))[3:] == 65535).all()


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
