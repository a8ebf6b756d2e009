"""The COCO 48 / 17 open-vocabulary instance split (OVR-CNN, XPM; Table 5 of the paper).

48 base classes are seen in training, 17 target classes are not. Two evaluation settings:
*constrained* (each group evaluated with only its own classes as vocabulary) and
*generalized* (all 65 classes as vocabulary, AP50 reported per group and overall).

Layout under the datasets root (official COCO 2017, then ``prepare_coco_ovd.py``)::

    coco/{train,val}2017/, coco/annotations/instances_{train,val}2017.json   (official)
    coco/annotations/instances_train2017_ovd_base.json      (prepared: base annotations)
    coco/annotations/instances_val2017_ovd_{base,target,all}.json   (prepared)

Each prepared val file keeps the val images with at least one annotation of the 65 classes
and the annotations of its classes. Registers ``coco_2017_train_ovd_base``,
``coco_2017_val_ovd_constrained_base``, ``coco_2017_val_ovd_constrained_target`` and
``coco_2017_val_ovd_generalized``; their metadata ``ovd_groups`` ({"base": [COCO ids],
"target": [COCO ids]}, the groups in the set) drives :class:`COCOOpenVocabularyEvaluator`.
"""
import os

from detectron2.data.datasets import load_coco_json

from ...vocabularies import get_vocabulary
from .utils import (
    get_datasets_root,
    register_dataset,
    require_prepared,
    things_metadata,
)

PREPARE_COMMAND = "python datasets/prepare_coco_ovd.py"


# name -> (split, file suffix, groups)
_DATASETS = {
    "coco_2017_train_ovd_base": ("train", "base", ("base",)),
    "coco_2017_val_ovd_constrained_base": ("val", "base", ("base",)),
    "coco_2017_val_ovd_constrained_target": ("val", "target", ("target",)),
    "coco_2017_val_ovd_generalized": ("val", "all", ("base", "target")),
}


def coco_ovd_json(root, split, suffix):
    return os.path.join(root, f"coco/annotations/instances_{split}2017_ovd_{suffix}.json")


def register_all_coco_ovd(root=None):
    """Register the COCO 48/17 sets under ``root`` (default: the datasets root)."""
    root = get_datasets_root() if root is None else root
    categories = get_vocabulary("coco_ovd_48_17")
    for name, (split, suffix, groups) in _DATASETS.items():
        json_file = coco_ovd_json(root, split, suffix)
        image_root = os.path.join(root, f"coco/{split}2017")

        def load(name=name, json_file=json_file, image_root=image_root):
            require_prepared(name, [os.path.join(root, "coco"), image_root, json_file],
                             PREPARE_COMMAND)
            return load_coco_json(json_file, image_root, name)

        metadata = {"json_file": json_file, "image_root": image_root,
                    "evaluator_type": "coco_ovd"}
        cats = sorted((c for c in categories if c["split"] in groups), key=lambda c: c["id"])
        metadata.update(things_metadata(cats))
        metadata["ovd_groups"] = {g: [c["id"] for c in cats if c["split"] == g] for g in groups}
        register_dataset(name, load, metadata)


register_all_coco_ovd()
