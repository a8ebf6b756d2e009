"""COCO 48/17 open-vocabulary split from tiny official instances JSONs."""
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from maskclip_d2.data.datasets.register_coco_ovd import register_all_coco_ovd
from helpers.tiny_datasets import mtimes, run_prepare, write_coco_instances


@pytest.fixture
def ovd_root(tmp_path):
    cat_id = write_coco_instances(tmp_path)
    run_prepare("prepare_coco_ovd", tmp_path)
    register_all_coco_ovd(str(tmp_path))
    return tmp_path, cat_id


def test_metadata_48_base_17_target(ovd_root):
    _, cat_id = ovd_root
    gen = MetadataCatalog.get("coco_2017_val_ovd_generalized")
    base = MetadataCatalog.get("coco_2017_val_ovd_constrained_base")
    target = MetadataCatalog.get("coco_2017_val_ovd_constrained_target")
    assert (len(gen.thing_classes), len(base.thing_classes), len(target.thing_classes)) == (65, 48, 17)
    assert len(gen.ovd_groups["base"]) == 48 and len(gen.ovd_groups["target"]) == 17
    assert set(base.ovd_groups) == {"base"} and set(target.ovd_groups) == {"target"}
    assert cat_id["cat"] in target.ovd_groups["target"] and "cat" in target.thing_classes
    assert "person" in base.thing_classes and "person" not in target.thing_classes
    # contiguous ids follow the COCO ids; "person" (1) is 0 everywhere it exists
    assert gen.thing_dataset_id_to_contiguous_id[1] == base.thing_dataset_id_to_contiguous_id[1] == 0
    assert gen.evaluator_type == "coco_ovd"
    assert len(MetadataCatalog.get("coco_2017_train_ovd_base").thing_classes) == 48


def test_records_keep_the_right_images_and_annotations(ovd_root):
    root, _ = ovd_root
    gen = DatasetCatalog.get("coco_2017_val_ovd_generalized")
    assert [r["image_id"] for r in gen] == [1, 3]  # image 2 has none of the 65 classes
    assert gen[0]["file_name"] == str(root / "coco/val2017/000000000001.jpg")
    names = MetadataCatalog.get("coco_2017_val_ovd_generalized").thing_classes
    assert [[names[a["category_id"]] for a in r["annotations"]] for r in gen] == [["person", "cat"], ["dog"]]
    target = DatasetCatalog.get("coco_2017_val_ovd_constrained_target")
    tnames = MetadataCatalog.get("coco_2017_val_ovd_constrained_target").thing_classes
    assert [[tnames[a["category_id"]] for a in r["annotations"]] for r in target] == [["cat"], ["dog"]]
    base = DatasetCatalog.get("coco_2017_val_ovd_constrained_base")
    assert [len(r["annotations"]) for r in base] == [1, 0]
    train = DatasetCatalog.get("coco_2017_train_ovd_base")
    assert [r["image_id"] for r in train] == [11]  # image 12 has only a target class
    assert [a["category_id"] for a in train[0]["annotations"]] == [0]  # the cat is dropped


def test_prepare_rerun_rewrites_nothing(ovd_root):
    root, _ = ovd_root
    before = mtimes(root / "coco")
    run_prepare("prepare_coco_ovd", root)
    assert mtimes(root / "coco") == before


def test_missing_folder_fails_at_load_naming_folder_and_command(tmp_path):
    register_all_coco_ovd(str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("coco_2017_val_ovd_generalized")
    assert str(tmp_path / "coco") in str(err.value)
    assert "python datasets/prepare_coco_ovd.py" in str(err.value)
