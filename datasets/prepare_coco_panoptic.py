#!/usr/bin/env python
"""Prepare COCO panoptic 2017 for maskclip-d2.

Reads the official download (images, ``panoptic_{split}2017.json`` and the panoptic PNGs),
checks that the JSON's categories are the shipped vocabulary ``coco_panoptic``
(Detectron2's ``COCO_CATEGORIES``: the same ids and names; a ``ValueError`` before anything
is written otherwise), and writes
``coco/panoptic_semseg_{split}2017/*.png``: semantic labels derived from the panoptic ones
(contiguous id in [0, 133) per pixel, 255 where the panoptic label is void). The class names
are not read from the download: they ship with the package.

Re-runs skip outputs that are already complete.

    python datasets/prepare_coco_panoptic.py [--root datasets] [--splits train val]
"""
import json
import os

import numpy as np
from panopticapi.utils import rgb2id

from maskclip_d2.data.datasets.register_coco_panoptic import coco_panoptic_paths
from maskclip_d2.data.datasets.prepare_utils import (
    argument_parser,
    check_class_names,
    convert_each,
    read_label_image,
    require_download,
    save_label_image,
)
from maskclip_d2.vocabularies import get_vocabulary

DOWNLOAD_HINT = (
    "Download {split}2017.zip and panoptic_annotations_trainval2017.zip from cocodataset.org "
    "into coco/, and extract annotations/panoptic_{split}2017.zip into coco/"
)


def _semantic_from_panoptic(pan_png, segments, contiguous, out_png):
    pan = rgb2id(read_label_image(pan_png).astype(np.uint32))
    sem = np.full(pan.shape, 255, dtype=np.uint8)
    for seg in segments:
        sem[pan == seg["id"]] = contiguous[seg["category_id"]]
    save_label_image(sem, out_png)


def read_split(root, split):
    """The panoptic JSON of one split, checked: its categories are the shipped ones and
    every panoptic PNG it names is there."""
    paths = coco_panoptic_paths(root, split)
    hint = DOWNLOAD_HINT.format(split=split)
    require_download([os.path.join(root, "coco"), paths["panoptic_json"],
                      paths["panoptic_root"]], hint)
    with open(paths["panoptic_json"]) as f:
        info = json.load(f)
    check_class_names(paths["panoptic_json"], "coco_panoptic",
                      {c["id"]: c["name"] for c in info["categories"]},
                      {c["id"]: c["name"] for c in get_vocabulary("coco_panoptic")})
    for ann in info["annotations"]:
        require_download([os.path.join(paths["panoptic_root"], ann["file_name"])], hint)
    return info


def prepare_split(root, split, info):
    """Write the semantic PNGs of one split from its checked panoptic JSON ``info``."""
    paths = coco_panoptic_paths(root, split)
    contiguous = {c["id"]: i for i, c in enumerate(get_vocabulary("coco_panoptic"))}
    jobs = [(os.path.join(paths["panoptic_root"], ann["file_name"]), ann["segments_info"],
             contiguous, os.path.join(paths["sem_seg_root"], ann["file_name"]))
            for ann in info["annotations"]]
    convert_each(jobs, _semantic_from_panoptic, f"COCO {split} semantic PNGs")


def main(argv=None):
    parser = argument_parser(__doc__)
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    args = parser.parse_args(argv)
    infos = {split: read_split(args.root, split) for split in args.splits}  # check all first
    for split, info in infos.items():
        prepare_split(args.root, split, info)
    print(f"COCO panoptic ready under {os.path.join(args.root, 'coco')}")


if __name__ == "__main__":
    main()
