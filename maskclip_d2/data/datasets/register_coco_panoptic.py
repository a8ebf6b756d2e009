"""COCO panoptic 2017 (133 classes) with semantic labels derived from the panoptic ones.

Layout under the datasets root (official download, then ``prepare_coco_panoptic.py``)::

    coco/{train,val}2017/                     images
    coco/annotations/panoptic_{train,val}2017.json
    coco/panoptic_{train,val}2017/            panoptic PNGs
    coco/panoptic_semseg_{train,val}2017/     semantic PNGs (prepared; contiguous ids, 255 void)

The vocabulary is the shipped preset ``coco_panoptic`` (Detectron2's ``COCO_CATEGORIES``,
raw names such as "wall-other-merged", as the MaskCLIP authors use them). Registers
``coco_2017_train_panoptic`` (replacing Detectron2's builtin entry of that name, whose
metadata lacks Mask2Former's stuff_classes convention), ``coco_2017_train_panoptic_with_sem_seg``
and ``coco_2017_val_panoptic_with_sem_seg``.
"""
import json
import os

from ...vocabularies import get_vocabulary
from .utils import (
    get_datasets_root,
    register_dataset,
    require_prepared,
    vocabulary_metadata,
)

PREPARE_COMMAND = "python datasets/prepare_coco_panoptic.py"

# name -> (image root, panoptic root, panoptic json, semantic root, instances json)
_SPLITS = {
    "coco_2017_train_panoptic": "train",
    "coco_2017_train_panoptic_with_sem_seg": "train",
    "coco_2017_val_panoptic_with_sem_seg": "val",
}


def coco_panoptic_paths(root, split):
    """Paths of one split ("train" or "val") under ``root``."""
    return {
        "image_root": os.path.join(root, f"coco/{split}2017"),
        "panoptic_root": os.path.join(root, f"coco/panoptic_{split}2017"),
        "panoptic_json": os.path.join(root, f"coco/annotations/panoptic_{split}2017.json"),
        "sem_seg_root": os.path.join(root, f"coco/panoptic_semseg_{split}2017"),
        "json_file": os.path.join(root, f"coco/annotations/instances_{split}2017.json"),
    }


def load_panoptic_json(json_file, image_root, panoptic_root, sem_seg_root, categories):
    """Records of a COCO-format panoptic dataset, in Mask2Former's format.

    Args:
        json_file (str): panoptic JSON (``images``, ``annotations`` with ``segments_info``).
        image_root, panoptic_root, sem_seg_root (str): folders of the images (".jpg"), the
            panoptic PNGs and the semantic PNGs (both named as in the JSON's ``file_name``).
        categories (list[dict]): vocabulary, in contiguous-id order.

    Returns:
        list[dict]: ``file_name``, ``image_id``, ``height``, ``width``, ``pan_seg_file_name``,
        ``sem_seg_file_name`` and ``segments_info`` (``id``, contiguous ``category_id``,
        ``isthing``, ``area``, ``bbox``, ``iscrowd``).
    """
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    isthing = {c["id"]: bool(c["isthing"]) for c in categories}
    with open(json_file) as f:
        info = json.load(f)
    images = {img["id"]: img for img in info["images"]}
    records = []
    for ann in info["annotations"]:
        image = images[ann["image_id"]]
        stem = os.path.splitext(ann["file_name"])[0]
        segments = []
        for seg in ann["segments_info"]:
            seg = dict(seg)
            dataset_id = seg["category_id"]
            seg["category_id"] = contiguous[dataset_id]
            seg["isthing"] = isthing[dataset_id]
            segments.append(seg)
        records.append(
            {
                "file_name": os.path.join(image_root, stem + ".jpg"),
                "image_id": ann["image_id"],
                "height": image["height"],
                "width": image["width"],
                "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
                "sem_seg_file_name": os.path.join(sem_seg_root, ann["file_name"]),
                "segments_info": segments,
            }
        )
    return records


def _load(name, root, paths):
    require_prepared(
        name,
        [os.path.join(root, "coco"), paths["image_root"], paths["panoptic_json"],
         paths["panoptic_root"], paths["sem_seg_root"]],
        PREPARE_COMMAND,
    )
    return load_panoptic_json(
        paths["panoptic_json"], paths["image_root"], paths["panoptic_root"],
        paths["sem_seg_root"], get_vocabulary("coco_panoptic"),
    )


def register_all_coco_panoptic(root=None):
    """Register the COCO panoptic datasets under ``root`` (default: ``get_datasets_root()``)."""
    root = get_datasets_root() if root is None else root
    categories = get_vocabulary("coco_panoptic")
    for name, split in _SPLITS.items():
        paths = coco_panoptic_paths(root, split)
        metadata = dict(paths, evaluator_type="coco_panoptic_seg", ignore_label=255,
                        label_divisor=1000)
        metadata.update(vocabulary_metadata(categories, panoptic=True))
        register_dataset(name, lambda n=name, p=paths: _load(n, root, p), metadata)


register_all_coco_panoptic()
