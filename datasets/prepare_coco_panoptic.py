#!/usr/bin/env python
"""Prepare COCO panoptic 2017 for maskclip-d2.

Reads the official download (images, ``panoptic_{split}2017.json`` and the panoptic PNGs)
and writes:

* ``coco/panoptic_semseg_{split}2017/*.png``: semantic labels derived from the panoptic
  ones (contiguous id in [0, 133) per pixel, 255 where the panoptic label is void);
* ``coco/maskclip_categories_coco_panoptic.json``: the 133 categories of the panoptic JSON
  with cleaned names ("wall-other-merged" -> "wall"), thing flags and colours.

Re-runs skip outputs that are already complete.

    python datasets/prepare_coco_panoptic.py [--root datasets] [--splits train val]
"""
import json
import os

import numpy as np
from panopticapi.utils import rgb2id

from maskclip_d2.data.datasets.register_coco_panoptic import VOCABULARY_FILE, coco_panoptic_paths
from maskclip_d2.data.datasets.utils import write_json_atomic
from maskclip_d2.data.prepare_utils import (
    argument_parser,
    convert_each,
    read_label_image,
    require_download,
    save_label_image,
)

DOWNLOAD_HINT = (
    "Download {split}2017.zip and panoptic_annotations_trainval2017.zip from cocodataset.org "
    "into coco/, and extract annotations/panoptic_{split}2017.zip into coco/"
)
_SUFFIXES = ("-merged", "-other", "-stuff")


def clean_name(name):
    """COCO panoptic name -> plain words: "wall-other-merged" -> "wall", "floor-wood" -> "floor wood"."""
    stripped = True
    while stripped:
        stripped = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name, stripped = name[: -len(suffix)], True
    return name.replace("-", " ").strip()


def vocabulary_from_panoptic_json(categories):
    """The vocabulary-file categories of the panoptic JSON's ``categories`` (sorted by id)."""
    return [
        {"id": c["id"], "name": clean_name(c["name"]), "isthing": int(c["isthing"]),
         "color": list(c["color"])}
        for c in sorted(categories, key=lambda c: c["id"])
    ]


def _semantic_from_panoptic(pan_png, segments, contiguous, out_png):
    pan = rgb2id(read_label_image(pan_png).astype(np.uint32))
    sem = np.full(pan.shape, 255, dtype=np.uint8)
    for seg in segments:
        sem[pan == seg["id"]] = contiguous[seg["category_id"]]
    save_label_image(sem, out_png)


def prepare_split(root, split):
    """Write the semantic PNGs of one split; returns the panoptic JSON's categories."""
    paths = coco_panoptic_paths(root, split)
    hint = DOWNLOAD_HINT.format(split=split)
    require_download([os.path.join(root, "coco"), paths["panoptic_json"],
                      paths["panoptic_root"]], hint)
    with open(paths["panoptic_json"]) as f:
        info = json.load(f)
    contiguous = {c["id"]: i for i, c in enumerate(sorted(info["categories"],
                                                           key=lambda c: c["id"]))}
    jobs = []
    for ann in info["annotations"]:
        pan_png = os.path.join(paths["panoptic_root"], ann["file_name"])
        require_download([pan_png], hint)
        jobs.append((pan_png, ann["segments_info"], contiguous,
                     os.path.join(paths["sem_seg_root"], ann["file_name"])))
    convert_each(jobs, _semantic_from_panoptic, f"COCO {split} semantic PNGs")
    return info["categories"]


def main(argv=None):
    parser = argument_parser(__doc__)
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    args = parser.parse_args(argv)
    categories = None
    for split in args.splits:
        categories = prepare_split(args.root, split)
    vocabulary_file = os.path.join(args.root, VOCABULARY_FILE)
    if not os.path.exists(vocabulary_file):
        write_json_atomic({"dataset": "coco_panoptic",
                           "categories": vocabulary_from_panoptic_json(categories)},
                          vocabulary_file)
    print(f"COCO panoptic ready under {os.path.join(args.root, 'coco')}")


if __name__ == "__main__":
    main()
