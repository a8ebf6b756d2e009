"""With an empty datasets folder (nothing downloaded, no prepare script run), every benchmark
is registered with its shipped class list, and reading its records raises the "not ready"
error that names the prepare script."""
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from maskclip_d2.data.datasets import (
    register_ade20k_150,
    register_ade20k_full,
    register_coco_ovd,
    register_coco_panoptic,
    register_lvis,
    register_pascal_context,
)

# registered name -> (number of classes, number of things, prepare script)
DATASETS = {
    "coco_2017_train_panoptic": (133, 80, "prepare_coco_panoptic"),
    "coco_2017_train_panoptic_with_sem_seg": (133, 80, "prepare_coco_panoptic"),
    "coco_2017_val_panoptic_with_sem_seg": (133, 80, "prepare_coco_panoptic"),
    "ade20k_panoptic_val": (150, 100, "prepare_ade20k_150"),
    "ade20k_sem_seg_val": (150, None, "prepare_ade20k_150"),
    "ade20k_instance_val": (100, 100, "prepare_ade20k_150"),
    "ade20k_full_sem_seg_val": (847, None, "prepare_ade20k_full"),
    "pascal_context_59_sem_seg_val": (59, None, "prepare_pascal_context"),
    "pascal_context_459_sem_seg_val": (459, None, "prepare_pascal_context"),
    "lvis_v1_val": (1203, 1203, "prepare_lvis"),
    "coco_2017_val_ovd_generalized": (65, 65, "prepare_coco_ovd"),
    "coco_2017_val_ovd_constrained_base": (48, 48, "prepare_coco_ovd"),
    "coco_2017_val_ovd_constrained_target": (17, 17, "prepare_coco_ovd"),
    "coco_2017_train_ovd_base": (48, 48, "prepare_coco_ovd"),
}


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    """Register every dataset as importing maskclip_d2 does, under an empty
    ``DETECTRON2_DATASETS``."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    for module in (register_ade20k_150, register_ade20k_full, register_coco_ovd,
                   register_coco_panoptic, register_lvis, register_pascal_context):
        getattr(module, "register_all_" + module.__name__.split(".register_")[-1])()
    return tmp_path


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_metadata_has_the_shipped_classes_without_any_data(empty_root, name):
    num_classes, num_things, _ = DATASETS[name]
    meta = MetadataCatalog.get(name)
    classes = meta.thing_classes if meta.evaluator_type in ("coco", "lvis", "coco_ovd") \
        else meta.stuff_classes
    assert len(classes) == num_classes
    if num_things is not None:
        assert len(meta.thing_dataset_id_to_contiguous_id) == num_things
    assert str(empty_root) in meta.image_root  # registered under the (empty) datasets root
    assert list(empty_root.iterdir()) == []  # registering wrote nothing


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_reading_records_says_which_script_to_run(empty_root, name):
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get(name)
    message = str(err.value)
    assert f"Dataset '{name}' is not ready" in message and str(empty_root) in message
    assert f"run `python datasets/{DATASETS[name][2]}.py`" in message
