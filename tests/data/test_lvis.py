"""LVIS v1 val: Detectron2's builtin dataset with open-vocabulary names."""
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from maskclip_d2.data.datasets.register_lvis import register_all_lvis
from helpers.tiny_datasets import run_prepare, write_lvis


def test_metadata_1203_readable_names_with_synonyms(tmp_path):
    register_all_lvis(str(tmp_path))  # names need no download
    meta = MetadataCatalog.get("lvis_v1_val")
    assert len(meta.thing_classes) == 1203
    assert meta.thing_classes[0] == "aerosol can, spray can"  # synonyms of category id 1
    assert meta.thing_dataset_id_to_contiguous_id[1203] == 1202
    assert meta.evaluator_type == "lvis"


def test_records_and_download_check(tmp_path):
    write_lvis(tmp_path)
    run_prepare("prepare_lvis", tmp_path)
    register_all_lvis(str(tmp_path))
    records = DatasetCatalog.get("lvis_v1_val")
    assert [r["file_name"] for r in records] == [
        str(tmp_path / "coco/val2017/000000000001.jpg"), str(tmp_path / "coco/train2017/000000000002.jpg")]
    assert [a["category_id"] for a in records[0]["annotations"]] == [0, 1]  # LVIS id - 1
    assert records[0]["neg_category_ids"] == [3]


def test_prepare_names_a_missing_image(tmp_path):
    write_lvis(tmp_path)
    (tmp_path / "coco/train2017/000000000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="train2017/000000000002.jpg"):
        run_prepare("prepare_lvis", tmp_path)


def test_missing_folder_fails_at_load_naming_folder_and_command(tmp_path):
    register_all_lvis(str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("lvis_v1_val")
    assert str(tmp_path / "lvis") in str(err.value)
    assert "python datasets/prepare_lvis.py" in str(err.value)
