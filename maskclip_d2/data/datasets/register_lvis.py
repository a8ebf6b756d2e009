"""LVIS v1 val (1203 classes) with open-vocabulary names.

Detectron2 registers ``lvis_v1_val`` with ``thing_classes`` = the first synonym of each
category ("aerosol_can"). This module registers it again, same loader, same files
(``lvis/lvis_v1_val.json`` and the COCO 2017 images in ``coco/``), with every synonym of the
category as readable text ("aerosol can, spray can") and a contiguous-id map. Names come
from the LVIS v1 categories that Detectron2 ships (the ``categories`` of lvis_v1_val.json),
so they are there without the download. ``datasets/prepare_lvis.py`` checks the download.
"""
import os

from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

from .utils import deterministic_colors, get_datasets_root, register_dataset, require_prepared

PREPARE_COMMAND = "python datasets/prepare_lvis.py"


def lvis_name(category):
    """All synonyms of an LVIS category, readable: "aerosol can, spray can"."""
    return ", ".join(s.replace("_", " ") for s in category["synonyms"])


def register_all_lvis(root=None):
    """Register ``lvis_v1_val`` under ``root`` (default: the datasets root)."""
    root = get_datasets_root() if root is None else root
    json_file = os.path.join(root, "lvis/lvis_v1_val.json")
    image_root = os.path.join(root, "coco", "")  # load_lvis_json appends "val2017/..."
    categories = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])

    def load():
        require_prepared("lvis_v1_val", [os.path.join(root, "lvis"), json_file, image_root],
                         PREPARE_COMMAND)
        return load_lvis_json(json_file, image_root)  # category_id = LVIS id - 1

    register_dataset("lvis_v1_val", load, {
        "json_file": json_file,
        "image_root": image_root,
        "evaluator_type": "lvis",
        "thing_classes": [lvis_name(c) for c in categories],
        "thing_colors": deterministic_colors(len(categories)),
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    })


register_all_lvis()
