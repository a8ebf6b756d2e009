"""ADE20K-150 (SceneParsing / ADEChallengeData2016) validation: panoptic, semantic, instance.

Layout under the datasets root (official download, then ``prepare_ade20k_150.py``)::

    ADEChallengeData2016/images/validation/*.jpg
    ADEChallengeData2016/annotations/validation/*.png            (official, 0 = void)
    ADEChallengeData2016/annotations_instance/validation/*.png   (official instance release)
    ADEChallengeData2016/objectInfo150.csv, categoryMapping.txt  (official class lists)
    ADEChallengeData2016/annotations_detectron2/validation/*.png (prepared: id - 1, 255 void)
    ADEChallengeData2016/ade20k_panoptic_val/*.png, ade20k_panoptic_val.json  (prepared)
    ADEChallengeData2016/ade20k_instance_val.json                (prepared)

The vocabulary is the shipped preset ``ade20k_150`` (Mask2Former's ``ADE20K_150_CATEGORIES``,
the names the MaskCLIP authors use); the 150 classes use the semantic id minus one as
dataset id, the 100 things are the classes of the official instance-segmentation release
(``categoryMapping.txt``; the prepare script checks both lists against the download). Registers ``ade20k_panoptic_val``, ``ade20k_sem_seg_val`` (replacing Detectron2's
builtin entry, whose names have no synonyms) and ``ade20k_instance_val`` (100 classes).
"""
import os

from detectron2.data.datasets import load_coco_json, load_sem_seg

from ...vocabularies import get_vocabulary
from .register_coco_panoptic import load_panoptic_json
from .utils import (
    get_datasets_root,
    register_dataset,
    require_prepared,
    things_metadata,
    vocabulary_metadata,
)

PREPARE_COMMAND = "python datasets/prepare_ade20k_150.py"
DATASET_DIR = "ADEChallengeData2016"


def ade20k_150_paths(root, dirname="validation", split="val"):
    """Paths of one split (``dirname`` as in the download, ``split`` as in prepared names)."""
    base = os.path.join(root, DATASET_DIR)
    return {
        "dataset_dir": base,
        "image_root": os.path.join(base, "images", dirname),
        "raw_sem_seg_root": os.path.join(base, "annotations", dirname),
        "raw_instance_root": os.path.join(base, "annotations_instance", dirname),
        "object_info": os.path.join(base, "objectInfo150.csv"),
        "category_mapping": os.path.join(base, "categoryMapping.txt"),
        "sem_seg_root": os.path.join(base, "annotations_detectron2", dirname),
        "panoptic_root": os.path.join(base, f"ade20k_panoptic_{split}"),
        "panoptic_json": os.path.join(base, f"ade20k_panoptic_{split}.json"),
        "json_file": os.path.join(base, f"ade20k_instance_{split}.json"),
    }


def register_all_ade20k_150(root=None):
    """Register the three ADE20K-150 val datasets under ``root`` (default: the datasets root)."""
    root = get_datasets_root() if root is None else root
    p = ade20k_150_paths(root)
    categories = get_vocabulary("ade20k_150")

    def check(name, *outputs):
        require_prepared(name, [p["dataset_dir"], p["image_root"], *outputs], PREPARE_COMMAND)

    def load_panoptic():
        check("ade20k_panoptic_val", p["panoptic_json"], p["panoptic_root"], p["sem_seg_root"])
        return load_panoptic_json(p["panoptic_json"], p["image_root"], p["panoptic_root"],
                                  p["sem_seg_root"], categories)

    def load_semantic():
        check("ade20k_sem_seg_val", p["sem_seg_root"])
        return load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext="png", image_ext="jpg")

    def load_instance():
        check("ade20k_instance_val", p["json_file"])
        return load_coco_json(p["json_file"], p["image_root"], "ade20k_instance_val")

    common = {"image_root": p["image_root"], "ignore_label": 255}
    panoptic_meta = dict(common, panoptic_root=p["panoptic_root"],
                         panoptic_json=p["panoptic_json"], sem_seg_root=p["sem_seg_root"],
                         json_file=p["json_file"], evaluator_type="coco_panoptic_seg",
                         label_divisor=1000)
    semantic_meta = dict(common, sem_seg_root=p["sem_seg_root"], evaluator_type="sem_seg")
    instance_meta = dict(common, json_file=p["json_file"], evaluator_type="coco")
    panoptic_meta.update(vocabulary_metadata(categories, panoptic=True))
    semantic_meta.update(vocabulary_metadata(categories, panoptic=False))
    instance_meta.update(things_metadata([c for c in categories if c["isthing"]]))
    register_dataset("ade20k_panoptic_val", load_panoptic, panoptic_meta)
    register_dataset("ade20k_sem_seg_val", load_semantic, semantic_meta)
    register_dataset("ade20k_instance_val", load_instance, instance_meta)


register_all_ade20k_150()
