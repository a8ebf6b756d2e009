"""ADE20K-847 (the full ADE20K release, ADE20K_2021_17_01) semantic val.

Layout under the datasets root (official download, then ``prepare_ade20k_full.py``)::

    ADE20K_2021_17_01/index_ade20k.pkl, images/ADE/{training,validation}/...  (official)
    ADE20K_2021_17_01/images_detectron2/validation/*.jpg        (prepared: flat copies)
    ADE20K_2021_17_01/annotations_detectron2/validation/*.tif   (prepared: 0..846, 65535 void)

The vocabulary is the shipped preset ``ade20k_847`` (Mask2Former's
``ADE20K_SEM_SEG_FULL_CATEGORIES``: class value k of the release, its ``objectnames[k - 1]``). Registers
``ade20k_full_sem_seg_val``.
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

PREPARE_COMMAND = "python datasets/prepare_ade20k_full.py"
DATASET_DIR = "ADE20K_2021_17_01"


def ade20k_full_paths(root):
    base = os.path.join(root, DATASET_DIR)
    return {
        "dataset_dir": base,
        "index": os.path.join(base, "index_ade20k.pkl"),
        "image_root": os.path.join(base, "images_detectron2", "validation"),
        "sem_seg_root": os.path.join(base, "annotations_detectron2", "validation"),
    }


def register_all_ade20k_full(root=None):
    """Register ``ade20k_full_sem_seg_val`` under ``root`` (default: the datasets root)."""
    root = get_datasets_root() if root is None else root
    p = ade20k_full_paths(root)

    def load():
        require_prepared("ade20k_full_sem_seg_val", [p["dataset_dir"], p["image_root"],
                         p["sem_seg_root"]], PREPARE_COMMAND)
        return load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext="tif", image_ext="jpg")

    metadata = {"image_root": p["image_root"], "sem_seg_root": p["sem_seg_root"],
                "evaluator_type": "sem_seg", "ignore_label": 65535}
    metadata.update(vocabulary_metadata(get_vocabulary("ade20k_847"), panoptic=False))
    register_dataset("ade20k_full_sem_seg_val", load, metadata)


register_all_ade20k_full()
