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

from ...vocabularies import get_vocabulary
from .utils import get_datasets_root, register_dataset, require_prepared, things_metadata

PREPARE_COMMAND = "python datasets/prepare_lvis.py"


def register_all_lvis(root=None):
    """Register ``lvis_v1_val`` under ``root`` (default: the datasets root)."""
    root = get_datasets_root() if root is None else root
    json_file = os.path.join(root, "lvis/lvis_v1_val.json")
    image_root = os.path.join(root, "coco", "")  # load_lvis_json appends "val2017/..."
    categories = get_vocabulary("lvis")

    def load():
        require_prepared("lvis_v1_val", [os.path.join(root, "lvis"), json_file, image_root],
                         PREPARE_COMMAND)
        return load_lvis_json(json_file, image_root)  # category_id = LVIS id - 1

    register_dataset("lvis_v1_val", load, {
        "json_file": json_file,
        "image_root": image_root,
        "evaluator_type": "lvis",
        **things_metadata(categories),
    })


register_all_lvis()
