#!/usr/bin/env python
"""Prepare the COCO 48 / 17 open-vocabulary split (OVR-CNN) for maskclip-d2.

Reads ``coco/annotations/instances_{train,val}2017.json``, checks that their categories
hold the 65 classes of the shipped vocabulary ``coco_ovd_48_17`` under the same ids and
names (a ``ValueError`` before anything is written otherwise), and writes, in
coco/annotations/, ``instances_train2017_ovd_base.json`` (train images with a base object,
base annotations) and ``instances_val2017_ovd_{base,target,all}.json`` (val images with an
object of the 65 classes; annotations of the base, target or all 65 classes).

Re-runs skip outputs that are already complete.

    python datasets/prepare_coco_ovd.py [--root datasets]
"""
import json
import os

import tqdm

from maskclip_d2.data.datasets.register_coco_ovd import coco_ovd_json
from maskclip_d2.utils import write_json_atomic
from maskclip_d2.data.datasets.prepare_utils import argument_parser, check_class_names, require_download
from maskclip_d2.vocabularies import get_vocabulary

DOWNLOAD_HINT = "Download annotations_trainval2017.zip from cocodataset.org and extract it into coco/"
_SUFFIXES = {"train": ("base",), "val": ("base", "target", "all")}


def split_ids():
    """{"base": COCO ids, "target": COCO ids, "all": both} of the shipped 48/17 split."""
    categories = get_vocabulary("coco_ovd_48_17")
    groups = {g: [c["id"] for c in categories if c["split"] == g] for g in ("base", "target")}
    groups["all"] = groups["base"] + groups["target"]
    return groups


def subset(coco, keep_ids, image_ids):
    """The COCO JSON restricted to ``image_ids`` and the annotations of ``keep_ids``."""
    keep_ids = set(keep_ids)
    return {
        "info": coco.get("info", {}),
        "licenses": coco.get("licenses", []),
        "images": [img for img in coco["images"] if img["id"] in image_ids],
        "annotations": [a for a in coco["annotations"]
                        if a["category_id"] in keep_ids and a["image_id"] in image_ids],
        "categories": [c for c in coco["categories"] if c["id"] in keep_ids],
    }


def read_source(root, split):
    """The official instances JSON of ``split``, its categories checked."""
    source = os.path.join(root, f"coco/annotations/instances_{split}2017.json")
    require_download([os.path.join(root, "coco"), source], DOWNLOAD_HINT)
    with open(source) as f:
        coco = json.load(f)
    check_class_names(source, "coco_ovd_48_17", {c["id"]: c["name"] for c in coco["categories"]},
                      {c["id"]: c["name"] for c in get_vocabulary("coco_ovd_48_17")},
                      complete=False)
    return coco


def prepare(root):
    outputs = {split: {s: coco_ovd_json(root, split, s) for s in suffixes}
               for split, suffixes in _SUFFIXES.items()}
    todo = [split for split in _SUFFIXES
            if not all(os.path.exists(o) for o in outputs[split].values())]
    sources = {split: read_source(root, split) for split in todo}  # check all first
    groups = split_ids()
    for split, coco in sources.items():
        # images: those with an object of the classes of the set (train) / of all 65 (val)
        image_group = "base" if split == "train" else "all"
        image_ids = {a["image_id"] for a in coco["annotations"]
                     if a["category_id"] in set(groups[image_group])}
        for suffix, output in tqdm.tqdm(outputs[split].items(), desc=f"COCO 48/17 {split}"):
            if not os.path.exists(output):
                write_json_atomic(subset(coco, groups[suffix], image_ids), output)


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    prepare(args.root)
    print(f"COCO 48/17 split ready under {os.path.join(args.root, 'coco/annotations')}")


if __name__ == "__main__":
    main()
