"""PASCAL Context validation (5105 images of VOC2010 val), 59 and 459 classes, semantic.

Layout under the datasets root (official downloads, then ``prepare_pascal_context.py``)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg, VOCdevkit/VOC2010/ImageSets/Main/val.txt
    pascal_context/trainval/*.mat            (PASCAL Context release: LabelMap, 0 = unlabeled)
    pascal_context/labels.txt                (release: "<id>: <name>", 459 lines)
    pascal_context/annotations_detectron2/pc59_val/*.png   (prepared: 0..58, 255 ignore)
    pascal_context/annotations_detectron2/pc459_val/*.tif  (prepared: 0..458, 65535 ignore)

The vocabularies are the shipped presets ``pascal_context_59`` and ``pascal_context_459``.

Registers ``pascal_context_59_sem_seg_val`` and ``pascal_context_459_sem_seg_val``.
"""
import os

from detectron2.data.datasets import load_sem_seg

from ...vocabularies import get_vocabulary
from .utils import (
    get_datasets_root,
    register_dataset,
    require_prepared,
    vocabulary_metadata,
)

PREPARE_COMMAND = "python datasets/prepare_pascal_context.py"

# num classes -> (label extension, ignore label)
_VARIANTS = {59: ("png", 255), 459: ("tif", 65535)}


def pascal_context_paths(root, num_classes):
    base = os.path.join(root, "pascal_context")
    return {
        "dataset_dir": base,
        "image_root": os.path.join(root, "VOCdevkit/VOC2010/JPEGImages"),
        "val_list": os.path.join(root, "VOCdevkit/VOC2010/ImageSets/Main/val.txt"),
        "mat_root": os.path.join(base, "trainval"),
        "labels": os.path.join(base, "labels.txt"),
        "sem_seg_root": os.path.join(base, "annotations_detectron2", f"pc{num_classes}_val"),
    }


def register_all_pascal_context(root=None):
    """Register the 59- and 459-class val sets under ``root`` (default: the datasets root)."""
    root = get_datasets_root() if root is None else root
    for num_classes, (ext, ignore_label) in _VARIANTS.items():
        name = f"pascal_context_{num_classes}_sem_seg_val"
        p = pascal_context_paths(root, num_classes)

        def load(name=name, p=p, ext=ext):
            require_prepared(name, [p["dataset_dir"], p["image_root"], p["sem_seg_root"]],
                             PREPARE_COMMAND)
            return load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext=ext, image_ext="jpg")

        metadata = {"image_root": p["image_root"], "sem_seg_root": p["sem_seg_root"],
                    "evaluator_type": "sem_seg", "ignore_label": ignore_label}
        metadata.update(vocabulary_metadata(get_vocabulary(f"pascal_context_{num_classes}"),
                                            panoptic=False))
        register_dataset(name, load, metadata)


register_all_pascal_context()
